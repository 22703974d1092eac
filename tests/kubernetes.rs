//! The Kubernetes manifests of `deploy/kubernetes/`, checked offline:
//!
//! - every manifest validates with `kubernetes-validate --strict` against Kubernetes 1.33
//!   (unknown fields are errors);
//! - they hold what `deploy/README.md` promises: the connector as a native sidecar (an
//!   `initContainers` entry with `restartPolicy: Always`), probes on the admin port, the
//!   locked-down security context, the token from the Secret at
//!   `/run/secrets/underpass-token`, the config from the ConfigMap, a grace period above the
//!   drain, two spread replicas with a PodDisruptionBudget;
//! - the `connector.toml` each ConfigMap carries is a valid connector configuration whose
//!   admin listener is the port the probes use.
//!
//! `kubernetes-validate` (PyPI) is installed by `scripts/test` into `.cache/kv` and named by
//! `UNDERPASS_KUBERNETES_VALIDATE`; the YAML is read with the PyYAML of the same virtual
//! environment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use underpass_connector::config::{ConnectorConfig, Overrides, DEFAULT_DRAIN_MS};
use underpass_e2e::repo_root;
use underpass_proto::{TunnelId, TunnelSecret, TunnelToken};

/// The Kubernetes version the manifests target (native sidecars need 1.29+).
const KUBERNETES_VERSION: &str = "1.33.0";
const TOKEN_PATH: &str = "/run/secrets/underpass-token";
const CONFIG_DIR: &str = "/etc/underpass";
const RUN_AS: i64 = 65532;

/// `kubernetes-validate`, from `UNDERPASS_KUBERNETES_VALIDATE` or `.cache/kv`.
///
/// # Panics
/// When it is not installed, saying how to install it.
fn validator() -> PathBuf {
    let path = std::env::var_os("UNDERPASS_KUBERNETES_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".cache/kv/bin/kubernetes-validate"));
    assert!(
        path.is_file(),
        "kubernetes-validate not found at {}: run the tests with scripts/test, which installs \
         it (pip, into .cache/kv), or set UNDERPASS_KUBERNETES_VALIDATE",
        path.display()
    );
    path
}

/// Every `*.yaml` of `deploy/kubernetes/`, sorted.
fn manifests() -> Vec<PathBuf> {
    let dir = repo_root().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifest in {}", dir.display());
    files
}

/// The documents of a YAML file, as JSON (read by the validator's own PyYAML).
fn documents(file: &Path) -> Vec<Value> {
    let python = validator().with_file_name("python3");
    let output = Command::new(&python)
        .args([
            "-c",
            "import json, sys, yaml\n\
             print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
        ])
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", python.display()));
    assert!(
        output.status.success(),
        "{} cannot read {}: {}",
        python.display(),
        file.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the documents as JSON")
}

/// Every document of every manifest.
fn all_documents() -> Vec<Value> {
    manifests().iter().flat_map(|f| documents(f)).collect()
}

/// The document of `kind` named `name`.
fn find<'a>(documents: &'a [Value], kind: &str, name: &str) -> &'a Value {
    documents
        .iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} named {name} in deploy/kubernetes"))
}

fn text<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {value}"))
}

#[test]
fn every_manifest_validates_strictly() {
    let validator = validator();
    for file in manifests() {
        let output = Command::new(&validator)
            .args(["--strict", "-k", KUBERNETES_VERSION])
            .arg(&file)
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", validator.display()));
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success(),
            "kubernetes-validate --strict -k {KUBERNETES_VERSION} {} failed ({}):\n{report}",
            file.display(),
            output.status
        );
        let resources = documents(&file).len();
        assert_eq!(
            report.matches(" passed ").count(),
            resources,
            "{}: not every resource was validated:\n{report}",
            file.display()
        );
    }
}

/// A token that parses (the configs are validated, not run).
fn token() -> String {
    TunnelToken {
        tunnel_id: TunnelId([7; 16]),
        secret: TunnelSecret([9; 32]),
        edges: vec!["edge.example.net:7844".into()],
        server_name: "edge.example.net".into(),
        ca_pin: [1; 32],
    }
    .encode()
}

/// The connector configuration a ConfigMap carries, loaded as the connector would.
fn connector_config(config_map: &Value) -> ConnectorConfig {
    let toml = text(&config_map["data"]["connector.toml"], "data.connector.toml");
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join("connector.toml");
    std::fs::write(&path, toml).expect("write connector.toml");
    let overrides = Overrides {
        token: Some(token()),
        ..Overrides::default()
    };
    ConnectorConfig::load(Some(&path), &overrides).unwrap_or_else(|e| {
        panic!(
            "ConfigMap {}: connector.toml is refused: {e}\n{toml}",
            config_map["metadata"]["name"]
        )
    })
}

/// Checks the connector container of `pod` (a pod template's spec) against `config_map`.
fn check_connector(pod: &Value, container: &Value, config_map: &Value) {
    let name = &container["name"];
    // Locked down: numeric non-root user, nothing writable, no privileges.
    let security = &container["securityContext"];
    assert_eq!(security["runAsNonRoot"], true, "{name}");
    assert_eq!(security["runAsUser"], RUN_AS, "{name}");
    assert_eq!(security["runAsGroup"], RUN_AS, "{name}");
    assert_eq!(security["readOnlyRootFilesystem"], true, "{name}");
    assert_eq!(security["allowPrivilegeEscalation"], false, "{name}");
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    // The Secret's files are root's with mode 0440: the group makes them readable.
    assert_eq!(pod["securityContext"]["fsGroup"], RUN_AS);
    assert_eq!(pod["automountServiceAccountToken"], false);

    // Probes on the admin port, which is where the ConfigMap's connector listens.
    let config = connector_config(config_map);
    let admin: SocketAddr = config
        .admin_listen
        .expect("the admin listener is configured");
    assert!(
        admin.ip().is_unspecified(),
        "the kubelet probes the pod's address, not loopback: {admin}"
    );
    let port = container["ports"]
        .as_array()
        .and_then(|ports| ports.iter().find(|p| p["name"] == "admin"))
        .unwrap_or_else(|| panic!("{name} has no port named admin"));
    assert_eq!(port["containerPort"], admin.port());
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], "admin");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["livenessProbe"]["httpGet"]["port"], "admin");

    // The drain finishes before the kubelet's SIGKILL.
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        grace * 1000 > config.timeouts.drain.as_millis() as u64,
        "grace {grace} s is not above drain {:?}",
        config.timeouts.drain
    );
    assert!(grace * 1000 > DEFAULT_DRAIN_MS);

    // The config from the ConfigMap, the token from the Secret, both read-only.
    let args: Vec<&str> = container["args"]
        .as_array()
        .map(|a| a.iter().map(|v| text(v, "an argument")).collect())
        .unwrap_or_default();
    assert_eq!(args, ["--config", "/etc/underpass/connector.toml"]);
    let mounts = container["volumeMounts"].as_array().expect("volumeMounts");
    let volumes = pod["volumes"].as_array().expect("volumes");
    let volume_of = |mount_path: &str| {
        let mount = mounts
            .iter()
            .find(|m| m["mountPath"] == mount_path)
            .unwrap_or_else(|| panic!("{name}: nothing mounted at {mount_path}"));
        assert_eq!(mount["readOnly"], true, "{mount_path}");
        let volume = volumes
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("no volume {}", mount["name"]));
        (mount, volume)
    };
    let (_, config_volume) = volume_of(CONFIG_DIR);
    assert_eq!(
        config_volume["configMap"]["name"],
        config_map["metadata"]["name"]
    );
    let (token_mount, token_volume) = volume_of(TOKEN_PATH);
    assert_eq!(token_volume["secret"]["secretName"], "underpass-token");
    assert_eq!(token_volume["secret"]["defaultMode"], 0o440);
    assert_eq!(token_mount["subPath"], "token");
}

#[test]
fn the_sidecar_is_a_native_sidecar_with_probes_and_a_locked_down_context() {
    let documents = all_documents();
    let deployment = find(&documents, "Deployment", "my-app");
    let pod = &deployment["spec"]["template"]["spec"];
    let sidecars = pod["initContainers"].as_array().expect("initContainers");
    let connector = sidecars
        .iter()
        .find(|c| c["name"] == "underpass")
        .expect("the underpass init container");
    assert_eq!(
        connector["restartPolicy"], "Always",
        "a native sidecar is an init container that restarts always"
    );
    assert!(
        !pod["containers"].as_array().expect("containers").is_empty(),
        "the app container"
    );
    let config_map = find(&documents, "ConfigMap", "my-app-underpass");
    check_connector(pod, connector, config_map);
    // A sidecar serves its own pod only: every route is on loopback.
    let config = connector_config(config_map);
    assert!(!config.routes.is_empty());
    for route in &config.routes {
        assert!(
            route.destination_text.starts_with("127."),
            "a sidecar route leaves the pod: {}",
            route.destination_text
        );
    }
}

#[test]
fn the_standalone_connector_has_two_spread_replicas_and_a_disruption_budget() {
    let documents = all_documents();
    let deployment = find(&documents, "Deployment", "underpass-connector");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    let containers = pod["containers"].as_array().expect("containers");
    let connector = containers
        .iter()
        .find(|c| c["name"] == "underpass")
        .expect("the underpass container");
    check_connector(
        pod,
        connector,
        find(&documents, "ConfigMap", "underpass-connector"),
    );

    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let selector = &deployment["spec"]["selector"]["matchLabels"];
    let anti = &pod["affinity"]["podAntiAffinity"];
    let term = &anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"];
    let term = if term.is_null() {
        &anti["requiredDuringSchedulingIgnoredDuringExecution"][0]
    } else {
        term
    };
    assert_eq!(term["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(&term["labelSelector"]["matchLabels"], selector);

    let budget = find(&documents, "PodDisruptionBudget", "underpass-connector");
    assert_eq!(budget["spec"]["minAvailable"], 1);
    assert_eq!(&budget["spec"]["selector"]["matchLabels"], selector);
    for (key, value) in selector.as_object().expect("matchLabels") {
        assert_eq!(&labels[key], value, "the pods carry the selector's labels");
    }
}

#[test]
fn the_token_secret_has_the_key_the_deployments_mount() {
    let documents = all_documents();
    let secret = find(&documents, "Secret", "underpass-token");
    assert!(
        secret["stringData"]["token"]
            .as_str()
            .is_some_and(|t| t.starts_with("upt1_")),
        "{secret}"
    );
}
