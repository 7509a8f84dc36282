//! The configuration's layering and validation. Every test runs in a
//! `figment::Jail`: a cleared environment and a temporary working directory,
//! restored afterwards, so no test depends on the process's environment.

use std::net::SocketAddr;

use clap::{CommandFactory, Parser};
use figment::Jail;
use rookery_broker::ListenerKind;
use rookery_store::writer::GroupCommit;

use super::*;
use crate::cli::{Cli, Command};

/// `rookery serve ARGS...`, parsed as the binary does (flags' variables
/// included).
fn serve_args(args: &[&str]) -> ServeArgs {
    let argv = ["rookery", "serve"].iter().chain(args);
    match Cli::try_parse_from(argv) {
        Ok(Cli {
            command: Command::Serve(args),
        }) => args,
        Ok(other) => panic!("not a serve command: {other:?}"),
        Err(error) => panic!("{error}"),
    }
}

/// Loads with the flags `args`; the configuration error as a string.
fn load_with(args: &[&str]) -> Result<Config, String> {
    load(&serve_args(args))
        .map(|loaded| loaded.config)
        .map_err(|error| error.to_string())
}

/// Runs `test` with an empty environment in a temporary directory.
#[allow(clippy::result_large_err)] // figment's own signature
fn jail(test: impl FnOnce(&mut Jail)) {
    Jail::expect_with(|jail| {
        jail.clear_env();
        test(jail);
        Ok(())
    });
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn with_no_layer_the_defaults_are_a_loopback_broker() {
    jail(|_| {
        let config = load_with(&[]).unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.node_id, 1);
        assert_eq!(config.data_dir, PathBuf::from("./rookery-data"));
        assert_eq!(config.broker.edge_id, "rookery-1");
        assert_eq!(config.broker.listeners.len(), 1);
        assert_eq!(config.broker.listeners[0].kind, ListenerKind::Tcp);
        assert_eq!(config.broker.listeners[0].address, addr("127.0.0.1:1883"));
        assert_eq!(config.http.listen.0, Some(addr("127.0.0.1:9883")));
        assert_eq!(config.store.listen, addr("127.0.0.1:7883"));
        assert_eq!(config.log.level, "info,openraft=warn");
        assert_eq!(config.log.format, LogFormat::Text);
    });
}

#[test]
fn the_store_defaults_are_the_store_crates() {
    let store = Config::default().store_config();
    let reference = StoreConfig::new(1, PathBuf::from("./rookery-data"), addr("127.0.0.1:7883"));
    assert_eq!(store.heartbeat_interval, reference.heartbeat_interval);
    assert_eq!(store.election_timeout, reference.election_timeout);
    assert_eq!(
        store.snapshot_after_entries,
        reference.snapshot_after_entries
    );
    assert_eq!(store.group_commit, reference.group_commit);
    assert_eq!(store.tick_interval, reference.tick_interval);
    assert_eq!(store.data_dir, reference.data_dir);
}

/// Peers can do nothing with `0.0.0.0`: a store or forwarding listener on
/// every interface is advertised by the host name (a container's or pod's),
/// one on a single address by itself, and a configured address wins.
#[test]
fn a_listener_on_every_interface_is_advertised_by_the_host_name() {
    let host = rustix::system::uname()
        .nodename()
        .to_str()
        .unwrap()
        .to_owned();
    let mut config = Config::default();
    assert_eq!(config.store_config().advertise, None);
    config.store.listen = addr("0.0.0.0:7883");
    config.cluster.forward_listen = OptionalAddr(Some(addr("0.0.0.0:7884")));
    assert_eq!(
        config.store_config().advertise,
        Some(format!("{host}:7883"))
    );
    assert_eq!(
        config.cluster_options().forward_advertise,
        Some(format!("{host}:7884"))
    );
    config.store.advertise = Some("rk1:7883".into());
    config.cluster.forward_advertise = Some("edge1:7884".into());
    assert_eq!(config.store_config().advertise.as_deref(), Some("rk1:7883"));
    assert_eq!(
        config.cluster_options().forward_advertise.as_deref(),
        Some("edge1:7884")
    );
    config.store.advertise = None;
    config.store.listen = addr("0.0.0.0:0");
    assert_eq!(config.store_config().advertise, None, "a port the OS picks");
}

/// One image for every role: `ROOKERY_ROLES` (or `--roles`) replaces the
/// file's `roles`.
#[test]
fn roles_come_from_rookery_roles_over_the_file() {
    jail(|jail| {
        jail.create_file(
            "rookery.toml",
            r#"
                roles = ["store", "edge"]
                [cluster]
                seeds = ["store-1:7883"]
                forward_listen = "127.0.0.1:7884"
            "#,
        )
        .unwrap();
        let config = load_with(&["--config", "rookery.toml"]).unwrap();
        assert_eq!(config.roles, vec![Role::Store, Role::Edge]);
        jail.set_env("ROOKERY_ROLES", "edge");
        let config = load_with(&["--config", "rookery.toml"]).unwrap();
        assert_eq!(config.roles, vec![Role::Edge]);
        let config = load_with(&["--config", "rookery.toml", "--roles", "store"]).unwrap();
        assert_eq!(config.roles, vec![Role::Store]);
        assert!(Cli::try_parse_from(["rookery", "serve", "--roles", "stor"]).is_err());
    });
}

#[test]
fn file_is_overridden_by_environment_and_environment_by_flags() {
    jail(|jail| {
        jail.create_file(
            "rookery.toml",
            r#"
                data_dir = "/var/lib/from-file"
                node_id = 3

                [log]
                level = "warn"

                [store]
                listen = "127.0.0.1:17883"

                [broker.limits]
                max_inflight = 10
                receive_maximum = 100
            "#,
        )
        .unwrap();
        jail.set_env("ROOKERY_BROKER__LIMITS__MAX_INFLIGHT", 64);
        jail.set_env("ROOKERY_LOG__LEVEL", "debug");
        jail.set_env("ROOKERY_STORE__LISTEN", "127.0.0.1:27883");
        let config = load_with(&[
            "--config",
            "rookery.toml",
            "--log-level",
            "trace",
            "--node-id",
            "5",
        ])
        .unwrap();
        // File only.
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/from-file"));
        assert_eq!(config.broker.limits.receive_maximum, 100);
        // Environment over file.
        assert_eq!(config.broker.limits.max_inflight, 64);
        assert_eq!(config.store.listen, addr("127.0.0.1:27883"));
        // Flags over environment and file.
        assert_eq!(config.log.level, "trace");
        assert_eq!(config.node_id, 5);
        // Untouched defaults stay.
        assert_eq!(config.broker.limits.maximum_qos, 2);
    });
}

#[test]
fn a_flags_own_variable_counts_as_the_flag() {
    jail(|jail| {
        jail.create_file("rookery.toml", "data_dir = \"from-file\"\nnode_id = 3\n")
            .unwrap();
        jail.set_env("ROOKERY_CONFIG", "rookery.toml");
        jail.set_env("ROOKERY_DATA_DIR", "from-variable");
        jail.set_env("ROOKERY_LISTEN", "127.0.0.1:0,127.0.0.1:11883");
        jail.set_env("ROOKERY_METRICS_LISTEN", "off");
        let config = load_with(&[]).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("from-variable"));
        assert_eq!(config.node_id, 3);
        assert_eq!(config.http.listen.0, None);
        let listeners: Vec<_> = config
            .broker
            .listeners
            .iter()
            .map(|l| (l.display_name(), l.address))
            .collect();
        assert_eq!(
            listeners,
            [
                ("tcp".to_string(), addr("127.0.0.1:0")),
                ("tcp-2".to_string(), addr("127.0.0.1:11883"))
            ]
        );
        // The flag itself beats its variable.
        let config = load_with(&["--data-dir", "from-flag"]).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("from-flag"));
    });
}

#[test]
fn rust_log_sets_the_level_below_rookery_variables_and_flags() {
    jail(|jail| {
        jail.set_env("RUST_LOG", "debug");
        assert_eq!(load_with(&[]).unwrap().log.level, "debug");
        jail.set_env("ROOKERY_LOG__LEVEL", "warn");
        assert_eq!(load_with(&[]).unwrap().log.level, "warn");
        assert_eq!(
            load_with(&["--log-level", "error"]).unwrap().log.level,
            "error"
        );
    });
}

#[test]
fn listen_flags_replace_every_configured_listener() {
    jail(|jail| {
        jail.create_file(
            "rookery.toml",
            r#"
                [[broker.listeners]]
                name = "ws"
                kind = "ws"
                address = "127.0.0.1:8080"

                [[broker.listeners]]
                name = "plain"
                address = "127.0.0.1:1884"
            "#,
        )
        .unwrap();
        let config = load_with(&["-c", "rookery.toml"]).unwrap();
        assert_eq!(config.broker.listeners.len(), 2);
        assert_eq!(config.broker.listeners[0].kind, ListenerKind::Ws);
        assert_eq!(config.broker.listeners[0].ws_path, "/mqtt");

        let config = load_with(&["-c", "rookery.toml", "--listen", "0.0.0.0:1883"]).unwrap();
        assert_eq!(config.broker.listeners.len(), 1);
        let listener = &config.broker.listeners[0];
        assert_eq!(listener.name, "tcp");
        assert_eq!(listener.kind, ListenerKind::Tcp);
        assert_eq!(listener.address, addr("0.0.0.0:1883"));
        assert_eq!(listener.tls, None);
        assert!(!listener.proxy_protocol);
    });
}

#[test]
fn an_unknown_key_in_the_file_is_rejected_with_its_name() {
    jail(|jail| {
        jail.create_file(
            "rookery.toml",
            "[broker.limits]\nmax_inflight = 8\nmax_in_flight_messages = 8\n",
        )
        .unwrap();
        let error = load_with(&["-c", "rookery.toml"]).unwrap_err();
        assert!(error.contains("max_in_flight_messages"), "{error}");
        assert!(error.contains("broker.limits"), "{error}");
        assert!(error.contains("rookery.toml"), "{error}");

        jail.create_file("top.toml", "nodeid = 2\n").unwrap();
        let error = load_with(&["-c", "top.toml"]).unwrap_err();
        assert!(error.contains("nodeid"), "{error}");
    });
}

#[test]
fn an_unknown_key_in_a_section_variable_is_rejected_with_its_name() {
    jail(|jail| {
        jail.set_env("ROOKERY_STORE__GROUP_COMIT", "false");
        let error = load_with(&[]).unwrap_err();
        assert!(error.contains("group_comit"), "{error}");
    });
}

#[test]
fn a_value_of_the_wrong_type_is_rejected_with_its_key() {
    jail(|jail| {
        jail.create_file("rookery.toml", "[broker.limits]\nmax_inflight = \"many\"\n")
            .unwrap();
        let error = load_with(&["-c", "rookery.toml"]).unwrap_err();
        assert!(error.contains("broker.limits.max_inflight"), "{error}");

        jail.create_file("kind.toml", "[[broker.listeners]]\nkind = \"quic\"\n")
            .unwrap();
        let error = load_with(&["-c", "kind.toml"]).unwrap_err();
        assert!(error.contains("quic"), "{error}");
    });
}

#[test]
fn other_rookery_variables_are_ignored_and_near_misses_are_warned_about() {
    jail(|jail| {
        // What Kubernetes sets for a service named `rookery`.
        jail.set_env("ROOKERY_SERVICE_HOST", "10.0.0.7");
        jail.set_env("ROOKERY_PORT", "tcp://10.0.0.7:1883");
        jail.set_env("ROOKERY_PORT_1883_TCP_PORT", "1883");
        jail.set_env("ROOKERY_BROKER_EDGE_ID", "typo");
        let loaded = load(&serve_args(&[])).map_err(|e| e.to_string()).unwrap();
        assert_eq!(loaded.config.broker.edge_id, "rookery-1");
        assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
        assert!(
            loaded.warnings[0].contains("ROOKERY_BROKER__EDGE_ID"),
            "{:?}",
            loaded.warnings
        );
    });
}

#[test]
fn the_edge_id_follows_the_node_id_unless_set() {
    jail(|jail| {
        assert_eq!(
            load_with(&["--node-id", "4"]).unwrap().broker.edge_id,
            "rookery-4"
        );
        jail.set_env("ROOKERY_BROKER__EDGE_ID", "\"edge-a\"");
        assert_eq!(
            load_with(&["--node-id", "4"]).unwrap().broker.edge_id,
            "edge-a"
        );
    });
}

#[test]
fn metrics_can_be_turned_off_in_the_file_or_by_flag() {
    jail(|jail| {
        jail.create_file("off.toml", "[metrics]\nlisten = \"off\"\n")
            .unwrap();
        assert_eq!(load_with(&["-c", "off.toml"]).unwrap().http.listen.0, None);
        assert_eq!(
            load_with(&["--metrics-listen", "off"])
                .unwrap()
                .http
                .listen
                .0,
            None
        );
        assert_eq!(
            load_with(&["-c", "off.toml", "--metrics-listen", "127.0.0.1:19883"])
                .unwrap()
                .http
                .listen
                .0,
            Some(addr("127.0.0.1:19883"))
        );
        jail.create_file("bad.toml", "[metrics]\nlisten = \"everywhere\"\n")
            .unwrap();
        let error = load_with(&["-c", "bad.toml"]).unwrap_err();
        assert!(error.contains("metrics.listen"), "{error}");
        assert!(error.contains("everywhere"), "{error}");
        jail.create_file("http.toml", "[http]\nlisten = \"127.0.0.1:19884\"\n")
            .unwrap();
        assert_eq!(
            load_with(&["-c", "http.toml"]).unwrap().http.listen.0,
            Some(addr("127.0.0.1:19884"))
        );
        assert_eq!(
            load_with(&["-c", "http.toml", "--http-listen", "off"])
                .unwrap()
                .http
                .listen
                .0,
            None
        );
        jail.create_file(
            "both.toml",
            "[http]\nlisten = \"127.0.0.1:19884\"\n[metrics]\nlisten = \"127.0.0.1:19885\"\n",
        )
        .unwrap();
        assert_eq!(
            load_with(&["-c", "both.toml"]).unwrap().http.listen.0,
            Some(addr("127.0.0.1:19884"))
        );
    });
}

#[test]
fn group_commit_can_be_turned_off() {
    jail(|jail| {
        jail.set_env("ROOKERY_STORE__GROUP_COMMIT", "false");
        let config = load_with(&[]).unwrap();
        assert_eq!(config.store_config().group_commit, GroupCommit::Off);
        jail.set_env("ROOKERY_STORE__GROUP_COMMIT", "true");
        jail.set_env("ROOKERY_STORE__GROUP_COMMIT_IN_FLIGHT", "4");
        let config = load_with(&[]).unwrap();
        assert_eq!(
            config.store_config().group_commit,
            GroupCommit::On { in_flight: 4 }
        );
    });
}

#[test]
fn a_missing_configuration_file_is_an_error() {
    jail(|_| {
        let error = load_with(&["-c", "nowhere.toml"]).unwrap_err();
        assert!(error.contains("nowhere.toml"), "{error}");
    });
}

#[test]
fn a_tls_listener_without_its_files_is_rejected() {
    jail(|jail| {
        jail.create_file(
            "rookery.toml",
            r#"
                [[broker.listeners]]
                name = "secure"
                kind = "tls"
                address = "127.0.0.1:8883"
            "#,
        )
        .unwrap();
        let error = load_with(&["-c", "rookery.toml"]).unwrap_err();
        assert!(error.contains("broker.listeners[0].tls:"), "{error}");
        assert!(error.contains("cert_file and key_file"), "{error}");

        jail.create_file(
            "missing.toml",
            r#"
                [[broker.listeners]]
                kind = "wss"
                address = "127.0.0.1:8884"
                [broker.listeners.tls]
                cert_file = "server.pem"
                key_file = "server.key"
            "#,
        )
        .unwrap();
        let error = load_with(&["-c", "missing.toml"]).unwrap_err();
        assert!(
            error.contains("broker.listeners[0].tls.cert_file"),
            "{error}"
        );
        assert!(
            error.contains("broker.listeners[0].tls.key_file"),
            "{error}"
        );

        jail.create_file("server.pem", "not checked here").unwrap();
        jail.create_file("server.key", "not checked here").unwrap();
        assert!(load_with(&["-c", "missing.toml"]).is_ok());
    });
}

#[test]
fn a_client_certificate_cannot_be_required_without_a_ca() {
    jail(|jail| {
        jail.create_file("server.pem", "").unwrap();
        jail.create_file("server.key", "").unwrap();
        jail.create_file(
            "rookery.toml",
            r#"
                [[broker.listeners]]
                kind = "tls"
                address = "127.0.0.1:8883"
                [broker.listeners.tls]
                cert_file = "server.pem"
                key_file = "server.key"
                require_client_cert = true
            "#,
        )
        .unwrap();
        let error = load_with(&["-c", "rookery.toml"]).unwrap_err();
        assert!(
            error.contains("broker.listeners[0].tls.require_client_cert"),
            "{error}"
        );
    });
}

#[test]
fn a_plain_listener_with_a_tls_section_is_rejected() {
    jail(|jail| {
        jail.create_file(
            "rookery.toml",
            r#"
                [[broker.listeners]]
                kind = "tcp"
                [broker.listeners.tls]
                cert_file = "a"
                key_file = "b"
            "#,
        )
        .unwrap();
        let error = load_with(&["-c", "rookery.toml"]).unwrap_err();
        assert!(error.contains("broker.listeners[0].tls"), "{error}");
    });
}

#[test]
fn every_impossible_limit_is_reported_at_once() {
    jail(|jail| {
        jail.create_file(
            "rookery.toml",
            r#"
                [broker.limits]
                receive_maximum = 0
                maximum_qos = 3
                max_packet_size = 1
                max_client_id_length = 22
                max_output_buffer = 0
                send_timeout_s = 0
            "#,
        )
        .unwrap();
        let error = load_with(&["-c", "rookery.toml"]).unwrap_err();
        for key in [
            "broker.limits.receive_maximum",
            "broker.limits.maximum_qos",
            "broker.limits.max_packet_size",
            "broker.limits.max_client_id_length",
            "broker.limits.max_output_buffer",
            "broker.limits.send_timeout_s",
        ] {
            assert!(error.contains(key), "{key} missing from: {error}");
        }
    });
}

/// The connection limits are read from `[broker.limits]` and from each
/// listener; all are off by default except the client id length and the
/// subscription count.
#[test]
fn connection_limits_are_read_from_the_limits_and_each_listener() {
    jail(|jail| {
        let defaults = Config::default().broker.limits;
        assert_eq!(defaults.max_connections, 0);
        assert_eq!(defaults.max_connections_per_address, 0);
        assert_eq!(defaults.max_client_id_length, 128);
        assert_eq!(defaults.max_subscriptions, 10_000);
        jail.create_file(
            "rookery.toml",
            r#"
                [broker.limits]
                max_connections = 10000
                max_connections_per_address = 50
                messages_rate = 100
                bytes_rate = 65536

                [[broker.listeners]]
                address = "127.0.0.1:1883"
                max_connections = 5000
                max_connection_rate = 200
            "#,
        )
        .unwrap();
        let config = load_with(&["-c", "rookery.toml"]).unwrap();
        let limits = &config.broker.limits;
        assert_eq!(limits.max_connections, 10_000);
        assert_eq!(limits.max_connections_per_address, 50);
        assert_eq!(limits.messages_rate, 100);
        assert_eq!(limits.bytes_rate, 65_536);
        assert_eq!(config.broker.listeners[0].max_connections, 5000);
        assert_eq!(config.broker.listeners[0].max_connection_rate, 200);
    });
}

#[test]
fn two_sockets_on_one_address_are_rejected() {
    jail(|_| {
        let error = load_with(&["--listen", "127.0.0.1:9883"]).unwrap_err();
        assert!(error.contains("broker.listeners[0].address"), "{error}");
        assert!(error.contains("http.listen"), "{error}");
        // Port 0 picks a fresh port each time.
        assert!(
            load_with(&[
                "--listen",
                "127.0.0.1:0",
                "--store-listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0"
            ])
            .is_ok()
        );
    });
}

#[test]
fn listener_names_are_unique() {
    jail(|jail| {
        jail.create_file(
            "rookery.toml",
            r#"
                [[broker.listeners]]
                address = "127.0.0.1:1883"
                [[broker.listeners]]
                address = "127.0.0.1:1884"
            "#,
        )
        .unwrap();
        let error = load_with(&["-c", "rookery.toml"]).unwrap_err();
        assert!(error.contains("broker.listeners[1].name"), "{error}");
    });
}

#[test]
fn store_timing_must_let_raft_elect() {
    jail(|jail| {
        jail.set_env("ROOKERY_STORE__ELECTION_TIMEOUT_MIN_MS", "100");
        let error = load_with(&[]).unwrap_err();
        assert!(error.contains("store.election_timeout_min_ms"), "{error}");
    });
}

#[test]
fn a_bad_log_filter_is_refused() {
    jail(|jail| {
        assert!(Cli::try_parse_from(["rookery", "serve", "--log-level", "info,=[x"]).is_err());
        jail.set_env("ROOKERY_LOG__LEVEL", "info,=[x");
        let error = load_with(&[]).unwrap_err();
        assert!(error.contains("log.level"), "{error}");
    });
}

#[test]
fn every_flag_has_a_variable_known_to_the_loader() {
    let command = Cli::command();
    let serve = command.find_subcommand("serve").expect("serve subcommand");
    let mut variables: Vec<String> = serve
        .get_arguments()
        .filter(|arg| arg.get_long().is_some_and(|long| long != "help"))
        .map(|arg| {
            arg.get_env()
                .and_then(|env| env.to_str())
                .unwrap_or_else(|| panic!("--{:?} has no variable", arg.get_long()))
                .to_string()
        })
        .collect();
    variables.sort();
    let mut known: Vec<String> = FLAG_VARIABLES
        .iter()
        .map(|v| format!("{ENV_PREFIX}{v}"))
        .collect();
    known.sort();
    assert_eq!(variables, known);
}

#[test]
fn the_examples_in_the_configuration_guide_parse() {
    let guide = include_str!("../../../docs/configuration.md");
    let mut examples = 0;
    let mut rest = guide;
    while let Some(start) = rest.find("```toml\n") {
        let body = &rest[start + "```toml\n".len()..];
        let end = body.find("```").expect("closed code block");
        let example = &body[..end];
        let parsed: Result<Config, _> = Figment::new().merge(Toml::string(example)).extract();
        if let Err(error) = parsed {
            panic!("{}\nin example:\n{example}", describe_figment(&error));
        }
        examples += 1;
        rest = &body[end + 3..];
    }
    assert!(examples >= 1, "found no TOML example");
}

#[test]
fn listeners_can_be_given_as_one_variable() {
    jail(|jail| {
        jail.set_env(
            "ROOKERY_BROKER__LISTENERS",
            r#"[{kind="ws", address="127.0.0.1:8080", ws_path="/ws"}, {name="lan", address="0.0.0.0:1883"}]"#,
        );
        let config = load_with(&[]).unwrap();
        let listeners = &config.broker.listeners;
        assert_eq!(listeners.len(), 2);
        assert_eq!(listeners[0].kind, ListenerKind::Ws);
        assert_eq!(listeners[0].ws_path, "/ws");
        assert_eq!(listeners[1].display_name(), "lan");
        assert_eq!(listeners[1].address, addr("0.0.0.0:1883"));
    });
}

/// Writes a cluster CA and a node certificate for `rookery-cluster` into
/// the jail's directory (`ca.pem`, `node.pem`, `node.key`), and a
/// certificate of another CA (`other.pem`, `other.key`).
fn cluster_pki(jail: &Jail) {
    let dir = jail.directory();
    let ca = rookery_testkit::TestCa::new("test cluster CA");
    ca.write(&dir.join("ca.pem"));
    ca.node(&["rookery-cluster"]).write(dir, "node");
    rookery_testkit::TestCa::new("another CA")
        .node(&["rookery-cluster"])
        .write(dir, "other");
}

const CLUSTER_TLS: &str = r#"
    [cluster.tls]
    ca_file = "ca.pem"
    cert_file = "node.pem"
    key_file = "node.key"
"#;

#[test]
fn cluster_tls_files_must_be_there_and_make_a_working_node() {
    jail(|jail| {
        jail.create_file("rookery.toml", CLUSTER_TLS).unwrap();
        let error = load_with(&["-c", "rookery.toml"]).unwrap_err();
        for key in ["ca_file", "cert_file", "key_file"] {
            assert!(error.contains(&format!("cluster.tls.{key}")), "{error}");
        }

        cluster_pki(jail);
        let config = load_with(&["-c", "rookery.toml"]).unwrap();
        let tls = config.cluster.tls.as_ref().unwrap();
        assert_eq!(tls.server_name, "rookery-cluster", "the default name");
        assert!(config.cluster_security().unwrap().tls.is_some());

        jail.create_file(
            "stranger.toml",
            &CLUSTER_TLS
                .replace("node.pem", "other.pem")
                .replace("node.key", "other.key"),
        )
        .unwrap();
        let error = load_with(&["-c", "stranger.toml"]).unwrap_err();
        assert!(error.contains("cluster.tls: "), "{error}");
        assert!(error.contains("peers would refuse"), "{error}");

        jail.create_file(
            "renamed.toml",
            &format!("{CLUSTER_TLS}server_name = \"rookery.example\"\n"),
        )
        .unwrap();
        let error = load_with(&["-c", "renamed.toml"]).unwrap_err();
        assert!(error.contains("rookery.example"), "{error}");
    });
}

#[test]
fn the_admin_token_file_must_hold_a_usable_token() {
    jail(|jail| {
        jail.set_env("ROOKERY_CLUSTER__ADMIN_TOKEN_FILE", "token");
        let error = load_with(&[]).unwrap_err();
        assert!(error.contains("cluster.admin_token_file"), "{error}");
        jail.create_file("token", "\n").unwrap();
        let error = load_with(&[]).unwrap_err();
        assert!(error.contains("empty"), "{error}");
        jail.create_file("token", "0123456789abcdef0123456789abcdef\n")
            .unwrap();
        let config = load_with(&[]).unwrap();
        assert!(config.cluster_security().unwrap().admin_token.is_some());
    });
}

#[test]
fn a_forward_queue_too_small_for_a_few_publishes_is_rejected() {
    jail(|jail| {
        jail.set_env("ROOKERY_CLUSTER__FORWARD_QUEUE_BYTES", "1000");
        let error = load_with(&[]).unwrap_err();
        assert!(error.contains("cluster.forward_queue_bytes"), "{error}");
        assert_eq!(
            Config::default().cluster.forward_queue_bytes,
            64 * 1024 * 1024
        );
    });
}

#[test]
fn the_store_and_retained_limits_load_and_reach_the_store_and_the_edge() {
    jail(|jail| {
        jail.create_file(
            "rookery.toml",
            r#"
                [broker.limits]
                max_retained_messages = 10
                max_retained_bytes = 2048
                max_persistent_sessions = 5
                persistent_client_expiration = 3600

                [cluster]
                max_write_bytes_in_flight = 4096

                [store]
                max_submit_in_flight = 16
            "#,
        )
        .unwrap();
        let config = load_with(&["-c", "rookery.toml"]).unwrap();
        let limits = &config.broker.limits;
        assert_eq!(limits.max_retained_messages, 10);
        assert_eq!(limits.max_retained_bytes, 2048);
        assert_eq!(limits.max_persistent_sessions, 5);
        assert_eq!(limits.persistent_client_expiration, Some(3600));
        assert_eq!(config.cluster_options().max_write_bytes_in_flight, 4096);
        assert_eq!(config.store_config().max_submit_in_flight, 16);
    });
    jail(|_| {
        let defaults = load_with(&[]).unwrap();
        assert_eq!(defaults.broker.limits.persistent_client_expiration, None);
        assert_eq!(
            defaults.store_config().max_submit_in_flight,
            rookery_store::node::DEFAULT_MAX_SUBMIT_IN_FLIGHT
        );
    });
}

/// Cluster ports beyond loopback without `[cluster.tls]` are warned about
/// loudly at start; on loopback, or with TLS, they are not.
#[test]
fn plaintext_cluster_ports_beyond_loopback_are_warned_about() {
    jail(|jail| {
        let warnings = |args: &[&str]| load(&serve_args(args)).unwrap().warnings;
        assert!(warnings(&[]).is_empty(), "{:?}", warnings(&[]));

        let exposed = warnings(&["--store-listen", "0.0.0.0:7883"]);
        assert!(exposed[0].starts_with("SECURITY: "), "{exposed:?}");
        assert!(
            exposed[0].contains("store.listen 0.0.0.0:7883"),
            "{exposed:?}"
        );
        assert!(
            exposed
                .iter()
                .any(|w| w.contains("cluster.admin_token_file")),
            "{exposed:?}"
        );

        jail.set_env("ROOKERY_CLUSTER__FORWARD_LISTEN", "10.1.2.3:7884");
        let exposed = warnings(&[]);
        assert!(
            exposed[0].contains("cluster.forward_listen 10.1.2.3:7884"),
            "{exposed:?}"
        );

        cluster_pki(jail);
        jail.create_file("rookery.toml", CLUSTER_TLS).unwrap();
        let secured = warnings(&["-c", "rookery.toml", "--store-listen", "0.0.0.0:7883"]);
        assert!(
            !secured.iter().any(|w| w.starts_with("SECURITY")),
            "{secured:?}"
        );
    });
}

#[test]
fn a_zero_expiration_and_a_zero_submit_limit_are_refused() {
    jail(|jail| {
        jail.create_file(
            "rookery.toml",
            r#"
                [broker.limits]
                persistent_client_expiration = 0

                [store]
                max_submit_in_flight = 0
            "#,
        )
        .unwrap();
        let error = load_with(&["-c", "rookery.toml"]).unwrap_err();
        for key in [
            "broker.limits.persistent_client_expiration",
            "store.max_submit_in_flight",
        ] {
            assert!(error.contains(key), "{key} missing from: {error}");
        }
    });
}

#[test]
fn the_drain_settings_load_with_their_defaults_and_bounds() {
    jail(|jail| {
        let config = load_with(&[]).unwrap();
        // Below Kubernetes' default terminationGracePeriodSeconds (30).
        assert_eq!(config.broker.shutdown_grace_s, 25);
        assert_eq!(config.broker.server_reference, None);
        jail.create_file(
            "rookery.toml",
            r#"
                [broker]
                shutdown_grace_s = 10
                server_reference = "mqtt-b.example.com:1883"
            "#,
        )
        .unwrap();
        let config = load_with(&["--config", "rookery.toml"]).unwrap();
        assert_eq!(config.broker.shutdown_grace_s, 10);
        assert_eq!(
            config.broker.server_reference.as_deref(),
            Some("mqtt-b.example.com:1883")
        );
        jail.set_env("ROOKERY_BROKER__SHUTDOWN_GRACE_S", "0");
        let error = load_with(&["--config", "rookery.toml"]).unwrap_err();
        assert!(error.contains("broker.shutdown_grace_s"), "{error}");
    });
}
