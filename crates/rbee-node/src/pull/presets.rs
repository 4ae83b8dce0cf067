//! A preset from the pool: a peer's status lists the presets it shares (name, content id of
//! the definition, base model's content id); [`fetch`] asks the holders for the definition
//! over `/rbee/shard/1`, takes it only when it hashes to the listed id and passes the checks
//! a Modelfile passes here, and returns it. The caller stores it (so the node lists, serves
//! and shares it from then on); its base is found like any model, by content id.

use std::collections::HashMap;
use std::time::Duration;

use futures::AsyncWriteExt;
use rbee_net::frame::{read_frame, write_frame};
use rbee_net::{Client, PeerId};
use rbee_proto::ContentId;
use rbee_proto::pool::SHARD_PROTOCOL;
use rbee_proto::shard::{PRESET_REPLY_CAP, ShardReply, ShardRequest, preset_reply};

use crate::error::NodeError;
use crate::preset::Preset;

/// How long one holder has to send a definition.
const PRESET_TIMEOUT: Duration = Duration::from_secs(10);
/// Holders asked before the fetch gives up.
const MAX_HOLDERS_ASKED: usize = 4;

async fn request(net: &Client, peer: PeerId, id: ContentId) -> Result<Preset, String> {
    let mut s = net
        .open_stream(peer, SHARD_PROTOCOL)
        .await
        .map_err(|e| e.to_string())?;
    write_frame(&mut s, &ShardRequest::Preset(id))
        .await
        .map_err(|e| e.to_string())?;
    let reply: Option<ShardReply> =
        tokio::time::timeout(PRESET_TIMEOUT, read_frame(&mut s, PRESET_REPLY_CAP))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())?;
    let _ = s.close().await;
    let bytes = preset_reply(reply, &id)?;
    Preset::from_peer(&bytes)
}

/// Which of the definitions shared under one name to take: the one most peers list (a
/// preset copied from node to node keeps its id), then the lowest id, so every node of the
/// pool makes the same choice. Returns the id and its holders.
fn choose(
    listings: Vec<(PeerId, String, ContentId)>,
) -> Option<(ContentId, Vec<(PeerId, String)>)> {
    let mut by_id: HashMap<ContentId, Vec<(PeerId, String)>> = HashMap::new();
    for (peer, name, id) in listings {
        by_id.entry(id).or_default().push((peer, name));
    }
    by_id
        .into_iter()
        .max_by(|(a, ha), (b, hb)| ha.len().cmp(&hb.len()).then(b.cmp(a)))
}

/// The preset named `name` as the pool shares it: `Ok(None)` when no peer lists one, an
/// error naming the peers when some list it but none sent a definition that checks out.
pub async fn fetch(net: &Client, name: &str) -> Result<Option<Preset>, NodeError> {
    let listings: Vec<_> = net
        .peers()
        .into_iter()
        .filter_map(|p| {
            let listed = p.status.find_preset(name)?;
            Some((p.id, p.status.name.clone(), listed.id))
        })
        .collect();
    let distinct = {
        let mut ids: Vec<_> = listings.iter().map(|l| l.2).collect();
        ids.sort();
        ids.dedup();
        ids.len()
    };
    let Some((id, holders)) = choose(listings) else {
        return Ok(None);
    };
    if distinct > 1 {
        tracing::warn!(
            preset = name,
            chosen = %id.short(),
            "{distinct} different presets share this name in the pool; taking the one most peers hold"
        );
    }
    let mut failures = Vec::new();
    for (peer, peer_name) in holders.into_iter().take(MAX_HOLDERS_ASKED) {
        match request(net, peer, id).await {
            Ok(preset) => {
                tracing::info!(preset = name, from = %peer_name, id = %id.short(), "preset fetched from the pool");
                return Ok(Some(preset));
            }
            Err(e) => {
                tracing::warn!(preset = name, peer = %peer_name, "preset not fetched: {e}");
                failures.push(format!("{peer_name}: {e}"));
            }
        }
    }
    Err(NodeError::Unavailable(format!(
        "the pool shares a preset `{name}`, but no peer sent a definition that checks out ({}); try again, or create it here with `rbee-node models create {name} -f Modelfile`",
        failures.join("; ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_definition_most_peers_hold_is_chosen_then_the_lowest_id() {
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let (x, y) = (ContentId::of(b"x"), ContentId::of(b"y"));
        let (lo, hi) = if x < y { (x, y) } else { (y, x) };
        let chosen = choose(vec![
            (a, "a".into(), hi),
            (b, "b".into(), hi),
            (c, "c".into(), lo),
        ])
        .unwrap();
        assert_eq!(chosen.0, hi);
        assert_eq!(chosen.1.len(), 2);
        let chosen = choose(vec![(a, "a".into(), hi), (c, "c".into(), lo)]).unwrap();
        assert_eq!(chosen.0, lo, "a tie goes to the lowest id");
        assert!(choose(Vec::new()).is_none());
    }
}
