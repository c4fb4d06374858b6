//! The connection to Redis: one task that publishes this loader's learns and TTL refreshes, catches up
//! from the hashes on every (re)connection, and follows the stream for the peers' records. It
//! talks to the loop only through two channels, so a slow or dead store never blocks the loop
//! that installs this host's own keys.

use std::{collections::HashMap, time::Duration};

use redis::{
    aio::MultiplexedConnection,
    streams::{StreamId, StreamRangeReply, StreamReadReply},
    AsyncConnectionConfig, Client, RedisResult, Value,
};
use tokio::sync::mpsc;

use super::record::{Op, SharedConn, StreamEntry, CONN_KEY_PREFIX, EVENTS_STREAM, STREAM_MAX_LEN};

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
    /// A peer's connection: from the stream (`live`), or from the catch-up.
    Learned {
        /// The connection.
        conn: SharedConn,
        /// Read from the stream as it was published (its delay is a replication delay).
        live: bool,
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
    mut outgoing: mpsc::Receiver<StreamEntry>,
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
    outgoing: &mut mpsc::Receiver<StreamEntry>,
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
            match publish(&mut writer, &batch, config.ttl_s).await {
                Ok(()) => {
                    let _ = incoming.send(FromStore::Published { count }).await;
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
            for entry in read_after(&mut reader, &mut last_id).await? {
                if entry.conn.origin == config.id || entry.op != Op::Learn {
                    continue;
                }
                let message = FromStore::Learned {
                    conn: entry.conn,
                    live: true,
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
                let Some(c) = SharedConn::from_fields(&fields) else {
                    continue;
                };
                let message = FromStore::Learned {
                    conn: c,
                    live: false,
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

/// Writes a batch in one round trip: per learn the hash (with its TTL) and a stream entry, per
/// touch the hash's TTL.
async fn publish(
    conn: &mut MultiplexedConnection,
    batch: &[StreamEntry],
    ttl_s: u64,
) -> RedisResult<()> {
    let mut pipe = redis::pipe();
    for entry in batch {
        let key = entry.conn.conn_key();
        match entry.op {
            Op::Learn => {
                pipe.cmd("HSET").arg(&key);
                for (name, value) in entry.conn.fields() {
                    pipe.arg(name).arg(value);
                }
                pipe.ignore();
                pipe.cmd("EXPIRE").arg(&key).arg(ttl_s).ignore();
            }
            Op::Touch => {
                pipe.cmd("EXPIRE").arg(&key).arg(ttl_s).ignore();
                continue;
            }
        }
        pipe.cmd("XADD")
            .arg(EVENTS_STREAM)
            .arg("MAXLEN")
            .arg("~")
            .arg(STREAM_MAX_LEN)
            .arg("*");
        for (name, value) in entry.fields() {
            pipe.arg(name).arg(value);
        }
        pipe.ignore();
    }
    pipe.query_async::<()>(conn).await
}

/// The stream entries after `last_id` (waiting up to [`READ_BLOCK_MS`] for some); advances
/// `last_id`. Malformed entries are skipped.
async fn read_after(
    conn: &mut MultiplexedConnection,
    last_id: &mut String,
) -> RedisResult<Vec<StreamEntry>> {
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
            if let Some(entry) = parse_entry(id) {
                entries.push(entry);
            }
        }
    }
    Ok(entries)
}

fn parse_entry(id: StreamId) -> Option<StreamEntry> {
    let fields: HashMap<String, Vec<u8>> = id
        .map
        .into_iter()
        .filter_map(|(name, value)| bytes_of(value).map(|v| (name, v)))
        .collect();
    StreamEntry::from_fields(&fields)
}

fn bytes_of(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}
