//! The source of a `/v1/streams` stream that carries a workspace feed next to its items
//! (`?runs=1,2&review_pack_tenants=7&workspaces=3`): everything a page shows on one
//! connection.
//!
//! Each part behaves as on a stream of its own, under the same gate: the items send their
//! snapshots and updates (`snapshot`, `update`, ids as for a set) and end the stream as they
//! would end theirs — `forbidden`, `gone`, `unreadable` — but for `terminal`: once every
//! item has sent its terminal state the items are let go and the stream goes on for the
//! feed, which never ends because runs finish. The feed sends `workspace_snapshot` (and
//! re-snapshots) and `workspace_update`, named apart from the items' events, and ends the
//! stream `forbidden` when the workspace is lost. Opening decides every part first; a
//! refusal of any of them refuses the whole request (404 before 403). At most one feed per
//! stream (`params::MAX_WORKSPACES`).

use super::driver::{End, Source, Step, Stream};
use super::items::{self, Items};
use super::workspace::{self, Feed, Framing, Subscribed};
use super::{Deadlines, OpenError, StreamGuard, Streams};
use crate::access::{self, AccessError, Claims, UserAccess};
use crate::metrics::StreamKind;
use std::sync::Arc;

pub(crate) struct Combined {
    /// None once every item has sent its terminal state (or none was asked for).
    items: Option<Items>,
    feed: Feed,
}

/// Opens a stream of these items and `workspace_id`'s feed: caps (429/503), then access for
/// every part (the one refusal for the whole request), then the stream.
pub(crate) async fn open(
    streams: &Arc<Streams>,
    claims: Claims,
    topic: String,
    run_ids: &[i64],
    tenant_ids: &[i64],
    workspace_id: i64,
) -> Result<Stream, OpenError> {
    let permit = streams.permit(claims.user_id)?;
    let user = streams.epochs.user(claims.user_id);
    // Subscribe to every part before anything is read or decided.
    let subs = items::subscribe(streams, run_ids, tenant_ids);
    let subscribed = Subscribed::new(streams, workspace_id);
    let read_items = async {
        match subs.is_empty() {
            true => Ok(None),
            false => items::seed(streams, &user, subs, run_ids, tenant_ids)
                .await
                .map(Some),
        }
    };
    let decided = tokio::join!(
        read_items,
        access::decide_workspace(&streams.batcher, &user, workspace_id)
    );
    let (mut items, grant) = match decided {
        (Ok(items), Ok(grant)) => (items, grant),
        (items, grant) => {
            let refusals = [items.err(), grant.err()].into_iter().flatten();
            let worst = refusals.fold(None, AccessError::worst);
            return Err(worst.expect("a part was refused").into());
        }
    };
    // The feed's pace, unless an item is younger still.
    let retry_ms = items
        .as_mut()
        .map_or(workspace::FEED_RETRY_MS, |items| {
            items::pace(&items.newest())
        })
        .min(workspace::FEED_RETRY_MS);
    let guard = StreamGuard::new(
        Arc::clone(&streams.metrics),
        StreamKind::multi,
        claims.user_id,
        topic,
        permit,
    );
    let combined = Combined {
        items,
        feed: subscribed.feed(grant, Framing::Shared),
    };
    Ok(Stream {
        streams: Arc::clone(streams),
        user,
        deadlines: Deadlines::new(claims.exp, streams.max_lifetime_secs),
        guard,
        retry_ms,
        source: Source::Combined(Box::new(combined)),
    })
}

impl Combined {
    /// The items' pending step first (snapshots first, in the order asked), then the feed's.
    pub(super) async fn step(&mut self, streams: &Streams, user: &Arc<UserAccess>) -> Step {
        if let Some(items) = &mut self.items {
            match items.step() {
                // Every terminal state is out: the items are over, the feed is not.
                Step::End(End::Terminal) => self.items = None,
                Step::Idle => {}
                step => return step,
            }
        }
        self.feed.step(streams, user).await
    }

    /// Decides what is stale: the items' owners their grants do not admit, and the feed's
    /// workspace. Either refusal ends the stream.
    pub(super) async fn decide(
        &mut self,
        streams: &Streams,
        user: &Arc<UserAccess>,
    ) -> Result<(), AccessError> {
        if let Some(items) = &mut self.items {
            items.decide(streams, user).await?;
        }
        if !self.feed.decided() {
            self.feed.decide(streams, user).await?;
        }
        Ok(())
    }

    pub(super) async fn changed(&mut self) -> bool {
        match &mut self.items {
            Some(items) => tokio::select! {
                more = items.changed() => more,
                more = self.feed.changed() => more,
            },
            None => self.feed.changed().await,
        }
    }
}
