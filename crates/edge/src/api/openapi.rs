//! The OpenAPI 3.1 description of the directory API, built with utoipa from the routes,
//! roles and shapes the handlers implement ([`document`]). The admin listener serves it as
//! `GET /openapi.json` (no token needed); `docs/openapi.json` is the committed copy (a test
//! keeps the two the same, and runs schemathesis against the served one).

use utoipa::openapi::path::{
    HttpMethod, Operation, OperationBuilder, ParameterBuilder, ParameterIn, PathItem,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{
    AdditionalProperties, ArrayBuilder, ComponentsBuilder, KnownFormat, ObjectBuilder, Schema,
    SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, PathsBuilder, Ref, RefOr, Required,
    ResponseBuilder,
};

/// The schemes every operation needs.
const BEARER: &str = "bearer";
/// The path prefix of an account's objects.
const ACCOUNT: &str = "/accounts/{account}";

fn string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

fn uuid() -> ObjectBuilder {
    string().format(Some(SchemaFormat::Custom("uuid".into())))
}

fn port() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(1))
        .maximum(Some(65535))
}

fn name(pattern: &str) -> ObjectBuilder {
    string()
        .min_length(Some(1))
        .max_length(Some(64))
        .pattern(Some(pattern))
}

fn one_of(values: &[&str]) -> ObjectBuilder {
    string().enum_values(Some(values.iter().copied()))
}

fn reference(name: &str) -> RefOr<Schema> {
    RefOr::Ref(Ref::from_schema_name(name))
}

/// An object whose unknown fields are refused (request bodies).
fn strict() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .additional_properties(Some(AdditionalProperties::FreeForm(false)))
}

const OBJECT_NAME: &str = "^[A-Za-z0-9][A-Za-z0-9_.-]*$";
const BINDING_NAME: &str = "^[A-Za-z_][A-Za-z0-9_]*$";

fn schemas() -> Vec<(&'static str, Schema)> {
    let tunnel_ref = strict().property("tunnel_id", uuid()).required("tunnel_id");
    let resolver_network = strict()
        .property("tunnel_id", uuid())
        .property(
            "resolver_ips",
            ArrayBuilder::new()
                .items(string().format(Some(SchemaFormat::KnownFormat(KnownFormat::Ipv4))))
                .min_items(Some(1))
                .max_items(Some(8)),
        )
        .required("tunnel_id");
    let host = strict()
        .description(Some(
            "Exactly one of: {ipv4, network}, {ipv6, network}, {ipv4, ipv6, network}, \
             {hostname, resolver_network}.",
        ))
        .property(
            "ipv4",
            string().format(Some(SchemaFormat::KnownFormat(KnownFormat::Ipv4))),
        )
        .property(
            "ipv6",
            string().format(Some(SchemaFormat::KnownFormat(KnownFormat::Ipv6))),
        )
        .property(
            "hostname",
            string().min_length(Some(1)).max_length(Some(253)),
        )
        .property("network", tunnel_ref)
        .property("resolver_network", resolver_network);
    let service_body = strict()
        .property("name", name(OBJECT_NAME))
        .property("type", one_of(&["http", "tcp"]))
        .property("host", host)
        .property("http_port", port())
        .property("https_port", port())
        .property("tcp_port", port())
        .property(
            "app_protocol",
            string()
                .min_length(Some(1))
                .max_length(Some(32))
                .pattern(Some("^[a-z0-9_-]+$")),
        )
        .property(
            "tls_settings",
            strict().property(
                "cert_verification_mode",
                one_of(&["verify_full", "verify_ca", "disabled"]),
            ),
        )
        .required("name")
        .required("type")
        .required("host");
    let network_body = strict()
        .property("name", name(OBJECT_NAME))
        .property("tunnel_id", uuid())
        .required("name");
    let binding_body = strict()
        .description(Some(
            "Exactly one of service_id, network_id and tunnel_id (tunnel_id: Admin only).",
        ))
        .property("name", name(BINDING_NAME))
        .property("service_id", uuid())
        .property("network_id", uuid())
        .property("tunnel_id", uuid())
        .property(
            "listen",
            string().description(Some("ip:port, default 127.0.0.1:0")),
        )
        .property("mode", one_of(&["proxy", "tcp"]))
        .required("name");
    let tunnel_body = strict()
        .property("name", name(OBJECT_NAME))
        .required("name");
    let token_body = strict()
        .property("name", string().min_length(Some(1)).max_length(Some(64)))
        .property("role", one_of(&["read", "bind", "admin"]))
        .required("name")
        .required("role");
    // Answers: the fields always there; others may follow.
    let timestamps = |object: ObjectBuilder| {
        object
            .property("created_at", string())
            .property("updated_at", string())
            .required("created_at")
    };
    let service = timestamps(
        ObjectBuilder::new()
            .property("service_id", uuid())
            .property("name", string())
            .property("type", one_of(&["http", "tcp"]))
            .property("host", ObjectBuilder::new())
            .required("service_id")
            .required("name")
            .required("type")
            .required("host"),
    )
    .required("updated_at");
    let network = timestamps(
        ObjectBuilder::new()
            .property("network_id", uuid())
            .property("name", string())
            .required("network_id")
            .required("name"),
    )
    .required("updated_at");
    let binding = timestamps(
        ObjectBuilder::new()
            .property("binding_id", uuid())
            .property("name", string())
            .property(
                "address",
                ObjectBuilder::new()
                    .schema_type(SchemaType::Array(vec![Type::String, Type::Null]))
                    .description(Some(
                        "Where the binding listens now; null when it does not.",
                    )),
            )
            .required("binding_id")
            .required("name"),
    )
    .required("updated_at");
    let tunnel = ObjectBuilder::new()
        .property("id", uuid())
        .property("name", string())
        .property("created_at", string())
        .property(
            "token",
            string().description(Some("The connector token: in the creation's answer only.")),
        )
        .required("id")
        .required("name");
    let token = ObjectBuilder::new()
        .property("id", uuid())
        .property("name", string())
        .property("role", one_of(&["read", "bind", "admin"]))
        .property("created_at", string())
        .property(
            "token",
            string().description(Some("The API token: in the creation's answer only.")),
        )
        .required("id")
        .required("role");
    let error = ObjectBuilder::new()
        .property("code", ObjectBuilder::new().schema_type(Type::Integer))
        .property("message", string())
        .required("code")
        .required("message");
    let failure = ObjectBuilder::new()
        .property("success", ObjectBuilder::new().schema_type(Type::Boolean))
        .property("errors", ArrayBuilder::new().items(reference("Error")))
        .property("messages", ArrayBuilder::new().items(ObjectBuilder::new()))
        .property("result", ObjectBuilder::new().schema_type(Type::Null))
        .required("success")
        .required("errors");
    let connector_token = ObjectBuilder::new()
        .property("token", string())
        .required("token");
    vec![
        ("ServiceBody", service_body.into()),
        ("NetworkBody", network_body.into()),
        ("BindingBody", binding_body.into()),
        ("TunnelBody", tunnel_body.into()),
        ("TokenBody", token_body.into()),
        ("Service", service.into()),
        ("Network", network.into()),
        ("Binding", binding.into()),
        ("Tunnel", tunnel.into()),
        ("Token", token.into()),
        ("ConnectorToken", connector_token.into()),
        ("Error", error.into()),
        ("Failure", failure.into()),
    ]
}

/// `{success, errors, messages, result: item}`, or a list of items with `result_info`.
fn envelope(item: &str, list: bool) -> ObjectBuilder {
    let result: RefOr<Schema> = if list {
        ArrayBuilder::new().items(reference(item)).into()
    } else {
        reference(item)
    };
    let mut envelope = ObjectBuilder::new()
        .property("success", ObjectBuilder::new().schema_type(Type::Boolean))
        .property("errors", ArrayBuilder::new().items(reference("Error")))
        .property("messages", ArrayBuilder::new().items(ObjectBuilder::new()))
        .property("result", result)
        .required("success")
        .required("result");
    if list {
        let count = || {
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0))
        };
        envelope = envelope
            .property(
                "result_info",
                ObjectBuilder::new()
                    .property("page", count())
                    .property("per_page", count())
                    .property("count", count())
                    .property("total_count", count()),
            )
            .required("result_info");
    }
    envelope
}

/// What a collection is called, its item schema and body schema.
struct Collection {
    path: &'static str,
    tag: &'static str,
    item: &'static str,
    body: &'static str,
    id: &'static str,
    /// Read, create, replace and delete roles ("-" for an operation it does not have).
    roles: [&'static str; 4],
}

const COLLECTIONS: &[Collection] = &[
    Collection {
        path: "connectivity/directory/services",
        tag: "services",
        item: "Service",
        body: "ServiceBody",
        id: "service_id",
        roles: ["read", "admin", "admin", "admin"],
    },
    Collection {
        path: "connectivity/directory/networks",
        tag: "networks",
        item: "Network",
        body: "NetworkBody",
        id: "network_id",
        roles: ["read", "admin", "admin", "admin"],
    },
    Collection {
        path: "connectivity/directory/bindings",
        tag: "bindings",
        item: "Binding",
        body: "BindingBody",
        id: "binding_id",
        roles: [
            "read",
            "bind (admin with tunnel_id)",
            "-",
            "bind (admin with tunnel_id)",
        ],
    },
    Collection {
        path: "connectivity/tunnels",
        tag: "tunnels",
        item: "Tunnel",
        body: "TunnelBody",
        id: "tunnel_id",
        roles: ["read", "admin", "-", "admin"],
    },
    Collection {
        path: "tokens",
        tag: "tokens",
        item: "Token",
        body: "TokenBody",
        id: "token_id",
        roles: ["admin", "admin", "-", "admin"],
    },
];

fn path_parameter(name: &str, description: &str) -> ParameterBuilder {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .description(Some(description))
        .schema(Some(string()))
}

fn query_parameter(name: &str, description: &str) -> ParameterBuilder {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Query)
        .required(Required::False)
        .description(Some(description))
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1)),
        ))
}

/// One operation: its summary, the role it needs, its success schema, and every failure the
/// handlers answer with.
fn operation(
    id: String,
    tag: &str,
    summary: String,
    success: ObjectBuilder,
    body: Option<&str>,
    parameters: Vec<ParameterBuilder>,
) -> Operation {
    let json = |schema: RefOr<Schema>| ContentBuilder::new().schema(Some(schema)).build();
    let failure = |why: &str| {
        ResponseBuilder::new()
            .description(why)
            .content("application/json", json(reference("Failure")))
            .build()
    };
    let mut operation = OperationBuilder::new()
        .operation_id(Some(id))
        .tag(tag)
        .summary(Some(summary))
        .security(SecurityRequirement::new::<_, [&str; 0], &str>(BEARER, []))
        .response(
            "200",
            ResponseBuilder::new()
                .description("Done.")
                .content("application/json", json(success.into())),
        )
        .response(
            "400",
            failure("A bad request body; each error names its field."),
        )
        .response(
            "401",
            failure("No API token, or one the edge does not know."),
        )
        .response(
            "403",
            failure("The token's role does not allow this; the message names the role needed."),
        )
        .response(
            "404",
            failure("No such object (or account) for this token."),
        )
        .response("405", failure("A method this path does not take."))
        .response(
            "409",
            failure(
                "A name taken, an object still in use, or a listen address that cannot be bound.",
            ),
        )
        .response("413", failure("A request body larger than 1 MiB."))
        .response(
            "500",
            failure("The edge could not store or apply the change."),
        );
    for parameter in parameters {
        operation = operation.parameter(parameter);
    }
    if let Some(body) = body {
        operation = operation.request_body(Some(
            RequestBodyBuilder::new()
                .required(Some(Required::True))
                .content("application/json", json(reference(body)))
                .build(),
        ));
    }
    operation.build()
}

/// The whole document.
pub(crate) fn document() -> OpenApi {
    let mut paths = PathsBuilder::new();
    let account = || path_parameter("account", "The account's id (UUID) or name.");
    for c in COLLECTIONS {
        let list_path = format!("{ACCOUNT}/{}", c.path);
        let item_path = format!("{list_path}/{{{}}}", c.id);
        let item_id = || path_parameter(c.id, "The object's id.");
        let role = |i: usize| format!(" (role: {})", c.roles[i]);
        let mut list = PathItem::new(
            HttpMethod::Get,
            operation(
                format!("list_{}", c.tag),
                c.tag,
                format!("List the account's {}{}", c.tag, role(0)),
                envelope(c.item, true),
                None,
                vec![
                    account(),
                    query_parameter("page", "The page, from 1."),
                    query_parameter("per_page", "Items per page (default 50, at most 1000)."),
                ],
            ),
        );
        list.merge_operations(PathItem::new(
            HttpMethod::Post,
            operation(
                format!("create_{}", c.tag),
                c.tag,
                format!("Create one{}", role(1)),
                envelope(c.item, false),
                Some(c.body),
                vec![account()],
            ),
        ));
        paths = paths.path(list_path.clone(), list);
        let mut item = PathItem::new(
            HttpMethod::Delete,
            operation(
                format!("delete_{}", c.tag),
                c.tag,
                format!("Delete one{}", role(3)),
                envelope(c.item, false),
                None,
                vec![account(), item_id()],
            ),
        );
        if c.tag != "tokens" {
            item.merge_operations(PathItem::new(
                HttpMethod::Get,
                operation(
                    format!("get_{}", c.tag),
                    c.tag,
                    format!("Get one{}", role(0)),
                    envelope(c.item, false),
                    None,
                    vec![account(), item_id()],
                ),
            ));
        }
        if c.roles[2] != "-" {
            item.merge_operations(PathItem::new(
                HttpMethod::Put,
                operation(
                    format!("replace_{}", c.tag),
                    c.tag,
                    format!("Replace one, every field{}", role(2)),
                    envelope(c.item, false),
                    Some(c.body),
                    vec![account(), item_id()],
                ),
            ));
        }
        paths = paths.path(item_path, item);
    }
    paths = paths.path(
        format!("{ACCOUNT}/connectivity/tunnels/{{tunnel_id}}/token"),
        PathItem::new(
            HttpMethod::Get,
            operation(
                "get_tunnel_token".into(),
                "tunnels",
                "The connector token of a tunnel (role: admin)".into(),
                envelope("ConnectorToken", false),
                None,
                vec![account(), path_parameter("tunnel_id", "The tunnel's id.")],
            ),
        ),
    );
    let mut components = ComponentsBuilder::new().security_scheme(
        BEARER,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("upa1_…")
                .build(),
        ),
    );
    for (name, schema) in schemas() {
        components = components.schema(name, schema);
    }
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Underpass edge directory API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Accounts' tunnels, VPC Services, VPC Networks, bindings and API tokens \
                     on the edge's admin listener. See docs/directory-api.md.",
                ))
                .build(),
        )
        .paths(paths.build())
        .components(Some(components.build()))
        .build()
}
