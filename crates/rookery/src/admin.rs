//! `rookery cluster`: an operator's view of the store group, and removing a
//! node from it, over the store's `Admin` gRPC service.

use std::fmt::Write as _;
use std::time::Duration;

use rookery_store::proto::{
    RemoveNodeRequest, StatusRequest, StatusResponse, admin_client::AdminClient,
};
use tonic::transport::Endpoint;

use crate::cli::{ClusterArgs, ClusterCommand};

/// How long connecting and each request may take.
const TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(args: &ClusterArgs) -> Result<String, String> {
    let channel = Endpoint::from_shared(format!("http://{}", args.store))
        .map_err(|error| format!("{}: {error}", args.store))?
        .connect_timeout(TIMEOUT)
        .timeout(TIMEOUT)
        .connect()
        .await
        .map_err(|error| format!("cannot reach the store at {}: {error}", args.store))?;
    let mut admin = AdminClient::new(channel);
    let status = admin
        .status(StatusRequest {})
        .await
        .map_err(|status| status.message().to_owned())?
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
            let done = admin
                .remove_node(RemoveNodeRequest { node_id })
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
