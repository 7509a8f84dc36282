//! `rookery cluster`: an operator's view of the store group, and removing a
//! node from it, over the store's `Admin` gRPC service. It reaches the store
//! as a node does: with the node's certificate when the cluster uses TLS,
//! and its admin token for membership changes (both from the configuration
//! named by `--config`).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use rookery_store::proto::{
    RemoveNodeRequest, StatusRequest, StatusResponse, admin_client::AdminClient,
};

use crate::cli::{ClusterArgs, ClusterCommand, ServeArgs};
use crate::config::Config;

/// How long connecting and each request may take.
const TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(args: &ClusterArgs) -> Result<String, String> {
    let config = crate::config::load(&ServeArgs {
        config: args.config.clone(),
        ..ServeArgs::default()
    })
    .map_err(|error| format!("configuration error:\n{error}"))?
    .config;
    let security = config
        .cluster_security()
        .map_err(|error| format!("the cluster's TLS or admin token: {error}"))?;
    let store = args.store.clone().unwrap_or_else(|| store_address(&config));
    let channel = security
        .endpoint(&store)
        .map_err(|error| format!("{store}: {error}"))?
        .connect_timeout(TIMEOUT)
        .timeout(TIMEOUT)
        .connect()
        .await
        .map_err(|error| format!("cannot reach the store at {store}: {}", error_chain(&error)))?;
    let mut admin = AdminClient::new(channel);
    let status = admin
        .status(StatusRequest {})
        .await
        .map_err(|status| {
            let hint = if security.tls.is_none() {
                " (if the cluster uses [cluster.tls], pass a node's configuration with --config)"
            } else {
                ""
            };
            format!(
                "the store at {store} did not answer: {}{hint}",
                status_chain(&status)
            )
        })?
        .into_inner();
    match args.command {
        ClusterCommand::Status => Ok(describe(&status)),
        ClusterCommand::Remove { node_id } => {
            if !status
                .voters
                .iter()
                .chain(&status.learners)
                .any(|m| m.node_id == node_id)
            {
                return Err(format!(
                    "node {node_id} is not in the group\n{}",
                    describe(&status)
                ));
            }
            let mut request = tonic::Request::new(RemoveNodeRequest { node_id });
            security.authorize(&mut request);
            let done = admin
                .remove_node(request)
                .await
                .map_err(|status| status.message().to_owned())?
                .into_inner();
            Ok(format!(
                "removed node {node_id} (log index {})",
                done.log_index
            ))
        }
    }
}

/// The configured node's own store address: the advertised one, else the
/// listen address (on loopback when it listens on every interface).
fn store_address(config: &Config) -> String {
    if let Some(advertised) = &config.store.advertise {
        return advertised.clone();
    }
    let mut listen = config.store.listen;
    if listen.ip().is_unspecified() {
        listen.set_ip(match listen.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    listen.to_string()
}

/// A status's message and its causes (a refused handshake is only named
/// in the innermost one).
fn status_chain(status: &tonic::Status) -> String {
    match std::error::Error::source(status) {
        Some(source) => format!("{}: {}", status.message(), error_chain(source)),
        None => status.message().to_owned(),
    }
}

/// An error and its causes, one after another: a refused TLS handshake is
/// only named in the innermost one.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn describe(status: &StatusResponse) -> String {
    let mut out = String::new();
    let leader = if status.leader_id == 0 {
        "none known".to_owned()
    } else {
        format!("{} at {}", status.leader_id, status.leader_address)
    };
    let _ = writeln!(out, "node {} ({})", status.node_id, status.state);
    let _ = writeln!(out, "leader: {leader}");
    let _ = writeln!(
        out,
        "term {}, last log index {}, applied {}",
        status.term, status.last_log_index, status.applied_index
    );
    for (kind, members) in [("voter", &status.voters), ("learner", &status.learners)] {
        for member in members {
            let _ = writeln!(out, "{kind} {} at {}", member.node_id, member.address);
        }
    }
    out.trim_end().to_owned()
}
