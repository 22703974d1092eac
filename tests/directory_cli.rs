//! `underpass-edge vpc …`, the directory API from the command line, against the real binary
//! and a real edge process: the CLI runs as a child process with `UNDERPASS_API`,
//! `UNDERPASS_API_TOKEN` and `UNDERPASS_ACCOUNT` (or the flags), the edge's first Admin token
//! is made with `underpass-edge token create` on its state directory.
//!
//! - tunnels, services (IP and hostname hosts), networks: create, list (table and `--json`),
//!   get, a full update, delete;
//! - the API's role rules and its 401 as the CLI reports them, with their exit statuses, and a
//!   missing option named with its environment variable;
//! - the API's validation naming the field (exit 64), the command line's own checks, and an
//!   edge that does not answer;
//! - `vpc binding workerd NAME` prints the workerd stanza with the address the API reports,
//!   and that address accepts connections.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Output};

use serde_json::{json, Value};
use tokio::net::TcpStream;
use underpass_e2e::edge_home::{EdgeHome, EdgeRun};
use underpass_e2e::edge_process::edge_binary;
use underpass_e2e::free_port;

/// A token the edge never issued.
const FORGED: &str = "upa1_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// Runs `underpass-edge ARGS...` to completion on a blocking thread, with `env` set and the
/// variables the CLI reads removed first (so the developer's own do not leak in).
async fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new(edge_binary());
        command.args(args);
        for name in [
            "RUST_LOG",
            "UNDERPASS_API",
            "UNDERPASS_API_CA",
            "UNDERPASS_API_TOKEN",
            "UNDERPASS_ACCOUNT",
            "UNDERPASS_EDGE_CONFIG",
        ] {
            command.env_remove(name);
        }
        command.envs(env).output().expect("run underpass-edge")
    })
    .await
    .expect("the CLI thread")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A token made on the edge host: `token create --account A --role R`.
async fn host_token(home: &EdgeHome, account: &str, role: &str) -> String {
    let config = home.config_path().display().to_string();
    let output = run(
        &[
            "--config",
            &config,
            "token",
            "create",
            "--account",
            account,
            "--role",
            role,
        ],
        &[],
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    let token = stdout(&output).trim().to_owned();
    assert!(token.starts_with("upa1_"), "{token}");
    token
}

/// `underpass-edge vpc …` as one account's token, through the environment.
struct Vpc {
    api: String,
    account: String,
    token: String,
}

impl Vpc {
    fn new(edge: &EdgeRun, account: &str, token: &str) -> Vpc {
        Vpc {
            api: format!("http://{}", edge.admin_addr().expect("an admin listener")),
            account: account.to_owned(),
            token: token.to_owned(),
        }
    }

    async fn output(&self, args: &[&str]) -> Output {
        let mut all = vec!["vpc"];
        all.extend(args);
        let env = [
            ("UNDERPASS_API", self.api.as_str()),
            ("UNDERPASS_API_TOKEN", self.token.as_str()),
            ("UNDERPASS_ACCOUNT", self.account.as_str()),
        ];
        let output = run(&all, &env).await;
        let printed = format!("{}{}", stdout(&output), stderr(&output));
        assert!(
            !printed.contains(&self.token),
            "vpc {args:?} printed the API token: {printed}"
        );
        output
    }

    /// A command that must succeed: its stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let output = self.output(args).await;
        assert!(
            output.status.success(),
            "vpc {args:?}: {}\n{}",
            output.status,
            stderr(&output)
        );
        stdout(&output)
    }

    /// A command that must succeed with `--json`: its stdout as JSON.
    async fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let text = self.ok(&all).await;
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("vpc {args:?}: not JSON ({e}): {text}"))
    }

    /// A command that must fail with exit status `code`: its stderr.
    async fn fails(&self, args: &[&str], code: i32) -> String {
        let output = self.output(args).await;
        assert_eq!(
            output.status.code(),
            Some(code),
            "vpc {args:?}: {}\n{}",
            stdout(&output),
            stderr(&output)
        );
        stderr(&output)
    }
}

fn field(value: &Value, name: &str) -> String {
    value[name]
        .as_str()
        .unwrap_or_else(|| panic!("no {name} in {value}"))
        .to_owned()
}

/// An account's tunnel made through the CLI: its id. The token is alone on stdout.
async fn tunnel(vpc: &Vpc, name: &str) -> String {
    let token = vpc.ok(&["tunnel", "create", name]).await;
    assert!(token.starts_with("upt1_"), "{token}");
    assert_eq!(token.lines().count(), 1, "the token alone: {token}");
    let tunnels = vpc.json(&["tunnel", "list"]).await;
    let tunnel = tunnels
        .as_array()
        .and_then(|all| all.iter().find(|t| t["name"] == name))
        .unwrap_or_else(|| panic!("tunnel {name} is listed: {tunnels}"));
    field(tunnel, "id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_and_networks_round_trip() {
    let home = EdgeHome::create_with_admin("");
    let admin_token = host_token(&home, "acme", "admin").await;
    let edge = home.start().await;
    let vpc = Vpc::new(&edge, "acme", &admin_token);

    let tunnel_id = tunnel(&vpc, "prod").await;
    let again = vpc.ok(&["tunnel", "token", &tunnel_id]).await;
    assert!(
        again.starts_with("upt1_") && again.lines().count() == 1,
        "{again}"
    );

    let web = vpc
        .json(&[
            "service",
            "create",
            "web",
            "--type",
            "http",
            "--tunnel-id",
            &tunnel_id,
            "--ipv4",
            "127.21.20.50",
            "--ipv6",
            "::1",
            "--http-port",
            "8080",
        ])
        .await;
    let web_id = field(&web, "service_id");
    assert_eq!(web["host"]["ipv6"], "::1", "{web}");
    assert_eq!(
        (&web["http_port"], &web["https_port"]),
        (&json!(8080), &json!(443))
    );
    // Without --json, create shows the object as a table.
    let table = vpc
        .ok(&[
            "service",
            "create",
            "db",
            "--type",
            "tcp",
            "--tunnel-id",
            &tunnel_id,
            "--hostname",
            "DB.corp",
            "--resolver-ips",
            "127.21.20.2,127.21.20.3",
            "--tcp-port",
            "5432",
            "--app-protocol",
            "postgresql",
        ])
        .await;
    assert!(
        table.contains("db.corp (dns 127.21.20.2,127.21.20.3)"),
        "{table}"
    );
    assert!(table.contains("tcp 5432 (postgresql)"), "{table}");

    let list = vpc.ok(&["service", "list"]).await;
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 3, "a header and two services: {list}");
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("NAME"),
        "{list}"
    );
    assert!(list.contains(" web ") && list.contains(" db "), "{list}");
    // The columns line up: every row's NAME starts where the header's does.
    let at = lines[0].find("NAME").expect("a NAME column");
    for line in &lines[1..] {
        assert_ne!(line.as_bytes()[at], b' ', "{list}");
        assert_eq!(&line[at - 2..at], "  ", "{list}");
    }
    let listed = vpc.json(&["service", "list"]).await;
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    let db = listed
        .as_array()
        .and_then(|all| all.iter().find(|s| s["name"] == "db"))
        .expect("db is listed")
        .clone();
    assert_eq!(db["host"]["hostname"], "db.corp", "{db}");
    assert_eq!(
        db["host"]["resolver_network"]["resolver_ips"],
        json!(["127.21.20.2", "127.21.20.3"])
    );

    let shown = vpc.ok(&["service", "get", &web_id]).await;
    assert!(
        shown.contains("127.21.20.50,::1") && shown.contains("http 8080"),
        "{shown}"
    );
    // A full replace: the port changes and the IPv6 address, left out, is gone.
    vpc.ok(&[
        "service",
        "update",
        &web_id,
        "web",
        "--type",
        "http",
        "--tunnel-id",
        &tunnel_id,
        "--ipv4",
        "127.21.20.50",
        "--http-port",
        "8081",
    ])
    .await;
    let updated = vpc.json(&["service", "get", &web_id]).await;
    assert_eq!(updated["http_port"], 8081, "{updated}");
    assert!(updated["host"].get("ipv6").is_none(), "{updated}");

    vpc.ok(&["service", "delete", &web_id]).await;
    let listed = vpc.json(&["service", "list"]).await;
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    let gone = vpc.fails(&["service", "get", &web_id], 1).await;
    assert!(gone.starts_with("error: 404: "), "{gone}");

    // Networks: a tunnel's, and one spanning the account.
    let corp = vpc
        .json(&["network", "create", "corp", "--tunnel-id", &tunnel_id])
        .await;
    assert_eq!(corp["tunnel_id"], tunnel_id.as_str(), "{corp}");
    vpc.ok(&["network", "create", "everywhere"]).await;
    let networks = vpc.ok(&["network", "list"]).await;
    assert!(
        networks.contains("(every tunnel of the account)"),
        "{networks}"
    );
    let corp_id = field(&corp, "network_id");
    let shown = vpc.json(&["network", "get", &corp_id]).await;
    assert_eq!(shown["name"], "corp");
    vpc.ok(&["network", "delete", &corp_id]).await;
    let networks = vpc.json(&["network", "list"]).await;
    assert_eq!(networks.as_array().map(Vec::len), Some(1), "{networks}");

    // A tunnel still used is refused (409, exit 1); once free it goes.
    let used = vpc.fails(&["tunnel", "delete", &tunnel_id], 1).await;
    assert!(
        used.starts_with("error: 409: ") && used.contains("still used"),
        "{used}"
    );
    let db_id = field(&db, "service_id");
    vpc.ok(&["service", "delete", &db_id]).await;
    vpc.ok(&["tunnel", "delete", &tunnel_id]).await;
    let tunnels = vpc.json(&["tunnel", "list"]).await;
    assert_eq!(tunnels, json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_reported_with_their_exit_status() {
    let home = EdgeHome::create_with_admin("");
    let admin_token = host_token(&home, "acme", "admin").await;
    let edge = home.start().await;
    let admin = Vpc::new(&edge, "acme", &admin_token);

    // The Admin token makes the others; each is alone on stdout, once.
    let read_token = admin
        .ok(&["token", "create", "--name", "dash", "--role", "read"])
        .await;
    let bind_token = admin
        .ok(&["token", "create", "--name", "ci", "--role", "bind"])
        .await;
    for token in [&read_token, &bind_token] {
        assert!(
            token.starts_with("upa1_") && token.lines().count() == 1,
            "{token}"
        );
    }
    let tokens = admin.ok(&["token", "list"]).await;
    assert!(
        tokens.contains("dash") && tokens.contains("ci") && tokens.contains("bind"),
        "{tokens}"
    );
    assert!(
        !tokens.contains("upa1_"),
        "a list never shows a token: {tokens}"
    );
    let read = Vpc::new(&edge, "acme", read_token.trim());
    let bind = Vpc::new(&edge, "acme", bind_token.trim());

    let tunnel_id = tunnel(&admin, "prod").await;
    let network = admin
        .json(&["network", "create", "corp", "--tunnel-id", &tunnel_id])
        .await;
    let network_id = field(&network, "network_id");

    // Read: lists, writes nothing.
    assert!(read.ok(&["network", "list"]).await.contains("corp"));
    let refused = read
        .fails(
            &[
                "service",
                "create",
                "web",
                "--type",
                "http",
                "--tunnel-id",
                &tunnel_id,
                "--ipv4",
                "127.21.20.1",
            ],
            1,
        )
        .await;
    assert!(refused.starts_with("error: 403: "), "{refused}");
    assert!(refused.contains("needs the admin role"), "{refused}");
    let refused = read.fails(&["tunnel", "token", &tunnel_id], 1).await;
    assert!(refused.contains("needs the admin role"), "{refused}");

    // Bind: binds a network by its id, not a tunnel id.
    let binding = bind
        .json(&["binding", "create", "CORP", "--network-id", &network_id])
        .await;
    assert!(binding["address"].as_str().is_some(), "{binding}");
    let refused = bind
        .fails(&["binding", "create", "RAW", "--tunnel-id", &tunnel_id], 1)
        .await;
    assert!(refused.contains("needs the admin role"), "{refused}");
    let bindings = read.ok(&["binding", "list"]).await;
    assert!(
        bindings.contains("CORP") && !bindings.contains("RAW"),
        "{bindings}"
    );

    // A token the edge does not know: 401, exit 1, and never echoed.
    let forged = Vpc::new(&edge, "acme", FORGED);
    let refused = forged.fails(&["service", "list"], 1).await;
    assert!(
        refused.starts_with("error: 401: ") && refused.contains("not valid"),
        "{refused}"
    );

    // A missing account: exit 64, naming the flag and its environment variable, before any
    // request.
    let api = format!("http://{}", edge.admin_addr().expect("an admin listener"));
    let output = run(
        &["vpc", "service", "list"],
        &[
            ("UNDERPASS_API", &api),
            ("UNDERPASS_API_TOKEN", &admin_token),
        ],
    )
    .await;
    assert_eq!(output.status.code(), Some(64), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(
        message.contains("--account") && message.contains("UNDERPASS_ACCOUNT"),
        "{message}"
    );
    assert!(!message.contains(&admin_token), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_input_exits_64() {
    let home = EdgeHome::create_with_admin("");
    let admin_token = host_token(&home, "acme", "admin").await;
    let edge = home.start().await;
    let vpc = Vpc::new(&edge, "acme", &admin_token);

    // The API's validation (400), every problem on its own line, naming its field.
    let refused = vpc
        .fails(
            &[
                "service",
                "create",
                "db",
                "--type",
                "http",
                "--tunnel-id",
                "X",
                "--hostname",
                "db.corp:5432",
            ],
            64,
        )
        .await;
    assert!(refused.contains("host.hostname"), "{refused}");
    assert!(refused.contains("must not contain a port"), "{refused}");
    assert!(
        refused.contains("host.resolver_network.tunnel_id"),
        "{refused}"
    );
    assert!(
        refused.lines().all(|line| line.starts_with("error: 400: ")),
        "{refused}"
    );
    assert_eq!(vpc.json(&["service", "list"]).await, json!([]));

    // The command line's own checks: a hostname beside an address, an https URL.
    let refused = vpc
        .fails(
            &[
                "service",
                "create",
                "db",
                "--type",
                "http",
                "--tunnel-id",
                "X",
                "--hostname",
                "db.corp",
                "--ipv4",
                "127.21.20.1",
            ],
            64,
        )
        .await;
    assert!(refused.contains("--hostname"), "{refused}");
    let output = run(
        &["vpc", "--api", "ftp://127.0.0.1:1", "service", "list"],
        &[
            ("UNDERPASS_API_TOKEN", &admin_token),
            ("UNDERPASS_ACCOUNT", "acme"),
        ],
    )
    .await;
    assert_eq!(output.status.code(), Some(64), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("ftp:// is not supported"),
        "{}",
        stderr(&output)
    );
    // A CA bundle for a plain-HTTP API is a mistake, named.
    let output = run(
        &[
            "vpc",
            "--api",
            "http://127.0.0.1:1",
            "--api-ca",
            "/nonexistent/ca.pem",
            "service",
            "list",
        ],
        &[
            ("UNDERPASS_API_TOKEN", &admin_token),
            ("UNDERPASS_ACCOUNT", "acme"),
        ],
    )
    .await;
    assert_eq!(output.status.code(), Some(64), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("--api-ca /nonexistent/ca.pem needs an https:// --api"),
        "{}",
        stderr(&output)
    );

    // Nothing listening: exit 1 and what to check.
    let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 33, 1));
    let nowhere = format!("http://{}", SocketAddr::new(ip, free_port(ip)));
    let output = run(
        &["vpc", "--api", &nowhere, "service", "list"],
        &[
            ("UNDERPASS_API_TOKEN", &admin_token),
            ("UNDERPASS_ACCOUNT", "acme"),
        ],
    )
    .await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(
        message.contains(&format!("no answer from the directory API at {nowhere}"))
            && message.contains("is [admin] listen set and the edge running?"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_workerd_prints_the_external_service() {
    let home = EdgeHome::create_with_admin("");
    let admin_token = host_token(&home, "acme", "admin").await;
    let edge = home.start().await;
    let vpc = Vpc::new(&edge, "acme", &admin_token);

    let tunnel_id = tunnel(&vpc, "prod").await;
    let network = vpc
        .json(&["network", "create", "corp", "--tunnel-id", &tunnel_id])
        .await;
    let binding = vpc
        .json(&[
            "binding",
            "create",
            "CORP_NET",
            "--network-id",
            &field(&network, "network_id"),
        ])
        .await;
    let address = field(&binding, "address");
    let addr: SocketAddr = address.parse().expect("the binding's address");
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{binding}");

    // Through the flags this time, the token still from the environment.
    let api = format!("http://{}", edge.admin_addr().expect("an admin listener"));
    let output = run(
        &[
            "vpc",
            "binding",
            "workerd",
            "CORP_NET",
            "--api",
            &api,
            "--account",
            "acme",
        ],
        &[("UNDERPASS_API_TOKEN", &admin_token)],
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        format!(
            "(name = \"CORP_NET\", external = (address = \"{address}\", http = (style = proxy))),\n"
        )
    );
    assert!(
        stderr(&output).contains(r#"bindings = [ (name = "CORP_NET", service = "CORP_NET") ]"#),
        "{}",
        stderr(&output)
    );
    // The address is the binding's live listener.
    TcpStream::connect(addr).await.expect("the binding listens");

    let missing = vpc.fails(&["binding", "workerd", "NOPE"], 1).await;
    assert!(missing.contains("no binding named \"NOPE\""), "{missing}");
    let binding_id = field(&binding, "binding_id");
    vpc.ok(&["binding", "delete", &binding_id]).await;
    let missing = vpc.fails(&["binding", "workerd", "CORP_NET"], 1).await;
    assert!(missing.contains("no binding named"), "{missing}");
}
