//! The connection to Redis: one task that publishes this loader's records and TTL refreshes,
//! catches up from the hashes on every (re)connection, and follows the stream for the peers'
//! records. It talks to the loop only through two channels, so a slow or dead store never
//! blocks the loop that installs this host's own keys.
//!
//! Learns, joins and ends are written by three small Lua scripts ([`LEARN_SCRIPT`],
//! [`JOIN_SCRIPT`], [`END_SCRIPT`]), each of which reads the hash, decides, writes it and
//! appends the stream entry in one atomic step: a learn does not bring back a connection whose
//! tombstone is there, nor take a token another live connection holds; a join is only added to
//! the live connection it names; an end only turns its own connection (same IDSN) into a
//! tombstone, never a newer connection whose Key-A has the same token.

use std::{collections::HashMap, time::Duration};

use redis::{
    aio::MultiplexedConnection,
    streams::{StreamId, StreamRangeReply, StreamReadReply},
    AsyncConnectionConfig, Client, RedisResult, Value,
};
use tokio::sync::mpsc;

use super::record::{Record, StoredConn, CONN_KEY_PREFIX, EVENTS_STREAM, STREAM_MAX_LEN};

/// How long one `XREAD` waits for new entries before it is sent again.
const READ_BLOCK_MS: u64 = 1_000;
/// Stream entries (and catch-up hashes) read at once.
const READ_BATCH: usize = 1_000;
/// Publications sent in one pipeline at most.
const WRITE_BATCH: usize = 512;
/// Waits between two connection attempts: doubled from the first to the last.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_LAST: Duration = Duration::from_secs(2);

/// What the task tells the loop.
#[derive(Debug)]
pub enum FromStore {
    /// Connected (again): every connection this host tracks should be published again, in case
    /// the store lost them (restarted without persistence).
    Connected,
    /// The connection failed; the task retries. `reason` holds no secret (the URL is never in it).
    Disconnected {
        /// The error.
        reason: String,
    },
    /// A peer's record: from the stream, or from the catch-up (a live hash is a
    /// [`Record::Learn`] with its subflows, a tombstone a [`Record::End`]).
    Record {
        /// What it says.
        record: Record,
        /// Read from the stream as it was published (its delay is a replication delay): when
        /// the store appended it, Unix ms of the store's clock (the stream entry's id).
        /// `None` from the catch-up.
        stored_unix_ms: Option<u64>,
    },
    /// The catch-up after a connection is done: `conns` hashes were read.
    CaughtUp {
        /// Hashes read (this loader's own included).
        conns: u64,
    },
    /// Publications written.
    Published {
        /// How many.
        count: u64,
        /// Of them, how many the store refused: a learn of a connection whose tombstone is
        /// there, or whose token another live connection holds; a join or an end of a
        /// connection the store does not hold as it names it.
        refused: u64,
    },
    /// Publications that could not be written (the connection failed under them); the loop
    /// publishes everything again at the next `Connected`.
    PublishFailed {
        /// How many.
        count: u64,
    },
}

/// How to reach the store; built from the command line by [`super::StoreOptions`].
pub struct LinkConfig {
    /// Connection settings (address, user, password, TLS).
    pub client: Client,
    /// This loader's id (its own records are skipped when read back).
    pub id: String,
    /// Seconds a connection's hash lives after its last publication.
    pub ttl_s: u64,
}

/// Runs until `outgoing` is closed (the loop ended).
pub async fn run(
    config: LinkConfig,
    mut outgoing: mpsc::Receiver<Record>,
    incoming: mpsc::Sender<FromStore>,
) {
    let mut retry = RETRY_FIRST;
    loop {
        let reason = match session(&config, &mut outgoing, &incoming).await {
            Ok(()) => return,
            Err(e) => e.to_string(),
        };
        if incoming
            .send(FromStore::Disconnected { reason })
            .await
            .is_err()
        {
            return;
        }
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(RETRY_LAST);
        if outgoing.is_closed() {
            return;
        }
    }
}

/// One connection's life: connect, catch up, then publish and follow until an error.
async fn session(
    config: &LinkConfig,
    outgoing: &mut mpsc::Receiver<Record>,
    incoming: &mpsc::Sender<FromStore>,
) -> RedisResult<()> {
    let settings = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        // Above READ_BLOCK_MS: an XREAD that waits is not a dead store.
        .set_response_timeout(Some(Duration::from_millis(READ_BLOCK_MS + 4_000)));
    let mut writer = config
        .client
        .get_multiplexed_async_connection_with_config(&settings)
        .await?;
    // A blocking XREAD holds its connection: the reader has its own.
    let mut reader = config
        .client
        .get_multiplexed_async_connection_with_config(&settings)
        .await?;
    let scripts = Scripts::load(&mut writer).await?;
    if incoming.send(FromStore::Connected).await.is_err() {
        return Ok(());
    }
    // The stream's end before the hashes are read: whatever is published meanwhile is read
    // from the stream as well (installing twice is harmless), so nothing falls in between.
    let mut last_id = stream_end(&mut reader).await?;
    let conns = catch_up(&mut reader, incoming).await?;
    if incoming.send(FromStore::CaughtUp { conns }).await.is_err() {
        return Ok(());
    }
    let write = async {
        loop {
            let Some(first) = outgoing.recv().await else {
                return Ok(());
            };
            let mut batch = vec![first];
            while batch.len() < WRITE_BATCH {
                match outgoing.try_recv() {
                    Ok(entry) => batch.push(entry),
                    Err(_) => break,
                }
            }
            let count = batch.len() as u64;
            match publish(&mut writer, &scripts, &batch, config.ttl_s).await {
                Ok(refused) => {
                    let _ = incoming.send(FromStore::Published { count, refused }).await;
                }
                Err(e) => {
                    let _ = incoming.send(FromStore::PublishFailed { count }).await;
                    return Err(e);
                }
            }
        }
    };
    let read = async {
        loop {
            for (record, stored_unix_ms) in read_after(&mut reader, &mut last_id).await? {
                if record.origin() == config.id || matches!(record, Record::Touch(_)) {
                    continue;
                }
                let message = FromStore::Record {
                    record,
                    stored_unix_ms: Some(stored_unix_ms),
                };
                if incoming.send(message).await.is_err() {
                    return Ok(());
                }
            }
        }
    };
    tokio::select! {
        r = write => r,
        r = read => r,
    }
}

/// The id of the stream's last entry (`0-0` for an empty or missing stream).
async fn stream_end(conn: &mut MultiplexedConnection) -> RedisResult<String> {
    let reply: StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(EVENTS_STREAM)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    Ok(reply
        .ids
        .first()
        .map_or_else(|| "0-0".to_owned(), |e| e.id.clone()))
}

/// Reads every connection hash and hands it to the loop; returns how many hashes it read. This
/// loader's own are included: with a fixed `--store-id`, a run that lost its maps (a reboot)
/// gets back what it had learned itself; installing what the maps hold already changes nothing.
/// Tombstones are handed over as ends: a loader that was away when a connection ended forgets
/// it now.
async fn catch_up(
    conn: &mut MultiplexedConnection,
    incoming: &mpsc::Sender<FromStore>,
) -> RedisResult<u64> {
    let pattern = format!("{CONN_KEY_PREFIX}*");
    let mut cursor: u64 = 0;
    let mut read = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(READ_BATCH)
            .query_async(conn)
            .await?;
        if !keys.is_empty() {
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.cmd("HGETALL").arg(key);
            }
            let hashes: Vec<HashMap<String, Vec<u8>>> = pipe.query_async(conn).await?;
            for fields in hashes {
                read += 1;
                // Expired between SCAN and HGETALL (empty), or not ours to read: skipped.
                let record = match StoredConn::from_fields(&fields) {
                    Some(StoredConn::Live(conn)) => Record::Learn(conn),
                    Some(StoredConn::Ended(end)) => Record::End(end),
                    None => continue,
                };
                let message = FromStore::Record {
                    record,
                    stored_unix_ms: None,
                };
                if incoming.send(message).await.is_err() {
                    return Ok(read);
                }
            }
        }
        if next == 0 {
            return Ok(read);
        }
        cursor = next;
    }
}

/// Writes a batch in one round trip: learns, joins and ends through their scripts, touches as
/// an `EXPIRE`. Returns how many the store refused.
async fn publish(
    conn: &mut MultiplexedConnection,
    scripts: &Scripts,
    batch: &[Record],
    ttl_s: u64,
) -> RedisResult<u64> {
    let mut pipe = redis::pipe();
    for record in batch {
        let key = record.conn_key();
        let (sha, fixed) = match record {
            Record::Touch(_) => {
                pipe.cmd("EXPIRE").arg(&key).arg(ttl_s);
                continue;
            }
            Record::Learn(c) => (&scripts.learn, vec![c.name().idsn_text()]),
            Record::Join(j) => {
                let (field, role) = j.subflow.field();
                (&scripts.join, vec![j.conn.idsn_text(), field, role])
            }
            Record::End(e) => (&scripts.end, vec![e.conn.idsn_text()]),
        };
        pipe.cmd("EVALSHA")
            .arg(sha)
            .arg(2)
            .arg(&key)
            .arg(EVENTS_STREAM)
            .arg(ttl_s)
            .arg(STREAM_MAX_LEN)
            .arg(fixed);
        for (name, value) in record.stream_fields() {
            pipe.arg(name).arg(value);
        }
    }
    // EXPIRE answers 0 for a hash that is gone: not a refusal.
    let replies: Vec<i64> = pipe.query_async(conn).await?;
    Ok(batch
        .iter()
        .zip(replies)
        .filter(|(record, reply)| !matches!(record, Record::Touch(_)) && *reply != 1)
        .count() as u64)
}

/// The SHA-1 names of the scripts, loaded (`SCRIPT LOAD`) at every connection: a store that
/// restarted has forgotten them.
struct Scripts {
    learn: String,
    join: String,
    end: String,
}

impl Scripts {
    async fn load(conn: &mut MultiplexedConnection) -> RedisResult<Self> {
        let load = |code: &'static str| {
            let mut cmd = redis::cmd("SCRIPT");
            cmd.arg("LOAD").arg(code);
            cmd
        };
        let (learn, join, end) = (load(LEARN_SCRIPT), load(JOIN_SCRIPT), load(END_SCRIPT));
        Ok(Self {
            learn: learn.query_async(conn).await?,
            join: join.query_async(conn).await?,
            end: end.query_async(conn).await?,
        })
    }
}

/// The arguments every script takes: `KEYS` = the connection's hash and the stream; `ARGV[1]`
/// the TTL, `ARGV[2]` the stream's length, `ARGV[3]` the IDSN of Key-A (what names the
/// connection besides the token). The stream entry's fields (`op` first) come last. The
/// scripts spell the hash fields [`super::record::FIELD_IDSN`] (`'i'`) and
/// [`super::record::FIELD_ENDED`] (`'e'`) themselves (a test checks they agree).
///
/// A learn (`ARGV[4..]`: the entry, whose fields after `op` are the hash's): refused (0) over
/// the tombstone of this connection, and (2) over another live connection with the same token
/// (the first one keeps it, as in the fast path's token map); a tombstone of another
/// connection is replaced.
pub const LEARN_SCRIPT: &str = r"
local i = redis.call('HGET', KEYS[1], 'i')
if i then
  if redis.call('HEXISTS', KEYS[1], 'e') == 1 then
    if i == ARGV[3] then return 0 end
    redis.call('DEL', KEYS[1])
  elseif i ~= ARGV[3] then
    return 2
  end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 4))
return 1
";

/// A join (`ARGV[4]`, `ARGV[5]`: the subflow's hash field and value; `ARGV[6..]`: the entry):
/// added only to the live hash of the connection it names (else 0).
pub const JOIN_SCRIPT: &str = r"
if redis.call('HGET', KEYS[1], 'i') ~= ARGV[3] or redis.call('HEXISTS', KEYS[1], 'e') == 1 then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[4], ARGV[5])
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 6))
return 1
";

/// An end (`ARGV[4..]`: the entry, whose fields after `op` are the tombstone's): the hash of
/// this connection, or none, becomes its tombstone (keys and subflows gone); a live hash of
/// another connection with the same token is left alone (2); a tombstone already there only
/// has its TTL restarted (0: the peers were told).
pub const END_SCRIPT: &str = r"
local i = redis.call('HGET', KEYS[1], 'i')
local ended = redis.call('HEXISTS', KEYS[1], 'e') == 1
if i and i ~= ARGV[3] and not ended then return 2 end
if i == ARGV[3] and ended then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 4))
return 1
";

/// The stream entries after `last_id` (waiting up to [`READ_BLOCK_MS`] for some), each with
/// the Unix ms its id holds (when the store appended it); advances `last_id`. Malformed entries
/// are skipped.
async fn read_after(
    conn: &mut MultiplexedConnection,
    last_id: &mut String,
) -> RedisResult<Vec<(Record, u64)>> {
    let reply: Option<StreamReadReply> = redis::cmd("XREAD")
        .arg("COUNT")
        .arg(READ_BATCH)
        .arg("BLOCK")
        .arg(READ_BLOCK_MS)
        .arg("STREAMS")
        .arg(EVENTS_STREAM)
        .arg(&*last_id)
        .query_async(conn)
        .await?;
    let mut entries = Vec::new();
    for key in reply.map(|r| r.keys).unwrap_or_default() {
        for id in key.ids {
            last_id.clone_from(&id.id);
            let stored_ms = id
                .id
                .split('-')
                .next()
                .and_then(|ms| ms.parse().ok())
                .unwrap_or(0);
            if let Some(entry) = parse_entry(id) {
                entries.push((entry, stored_ms));
            }
        }
    }
    Ok(entries)
}

fn parse_entry(id: StreamId) -> Option<Record> {
    let fields: HashMap<String, Vec<u8>> = id
        .map
        .into_iter()
        .filter_map(|(name, value)| bytes_of(value).map(|v| (name, v)))
        .collect();
    Record::from_stream(&fields)
}

fn bytes_of(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared_store::record::{FIELD_ENDED, FIELD_IDSN};

    #[test]
    fn the_scripts_spell_the_fields_as_the_records_do() {
        for script in [LEARN_SCRIPT, JOIN_SCRIPT, END_SCRIPT] {
            assert!(
                script.contains(&format!("KEYS[1], '{FIELD_IDSN}')")),
                "{script}"
            );
            assert!(
                script.contains(&format!("KEYS[1], '{FIELD_ENDED}')")),
                "{script}"
            );
        }
    }
}
