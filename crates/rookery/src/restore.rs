//! `rookery restore`: a new store group from a backup, in a new data
//! directory (see `rookery_store::backup`).

use crate::cli::{RestoreArgs, ServeArgs};

/// Restores the backup `args` name; what was restored, or why not.
pub fn run(args: &RestoreArgs) -> Result<String, String> {
    let config = crate::config::load(&ServeArgs {
        config: args.config.clone(),
        data_dir: args.data_dir.clone(),
        node_id: args.node_id,
        ..ServeArgs::default()
    })
    .map_err(|error| format!("configuration error:\n{error}"))?
    .config;
    // The address the node will have in its group, as `rookery serve`
    // gives it: the advertised one, else the listen address.
    let address = match (&args.store_address, &config.store.advertise) {
        (Some(address), _) | (None, Some(address)) => address.clone(),
        (None, None) if config.store.listen.port() == 0 => {
            return Err(
                "store.listen has port 0: give the restored node a fixed store port, or \
                 --store-address"
                    .to_owned(),
            );
        }
        (None, None) => config.store.listen.to_string(),
    };
    let restored =
        rookery_store::backup::restore(&args.from, &config.data_dir, config.node_id, &address)
            .map_err(|error| error.to_string())?;
    let backup = &restored.backup;
    Ok(format!(
        "restored the backup of node {} (applied index {}, term {}; voters {:?}) into {}:\n\
         {} sessions, {} retained topics; node {} at {address} is the single voter of a new \
         group. Start it with `rookery serve` on that data directory and node id; other \
         nodes join it through cluster.seeds (or `rookery ctl cluster add-voter`).",
        backup.node_id,
        backup.applied_index,
        backup.applied_term,
        backup.voters,
        config.data_dir.display(),
        restored.sessions,
        restored.retained,
        config.node_id,
    ))
}
