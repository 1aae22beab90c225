//! The Redis backend: the same workload, modelled as a Redis user would build a registry,
//! over a RESP client written by hand.
//!
//! # The model
//!
//! - One sorted set per service type, key `svc:{type}`; a member is `{uuid}|{ip}:{port}`,
//!   its score the instance's expiry time in milliseconds since the epoch. The uuid is made
//!   by the client (Redis has no id of its own to give).
//! - **Register**: `ZADD key expiry member` with a new uuid. When the connection registered
//!   the same endpoint before, the same round trip also carries `ZREM key old-member`, so
//!   that a query lists the endpoint once, as the registry's replacement does.
//! - **Heartbeat**: `ZADD key XX expiry member`, the member from the client's own map of
//!   its registrations (`XX`: a member already reaped is not brought back).
//! - **Query**: `ZRANGEBYSCORE key now +inf`.
//! - **Expiry**: a reaper on its own connection sends `ZREMRANGEBYSCORE key -inf now` for
//!   every type once a second, for the whole run.
//!
//! # RESP
//!
//! A command is an array of bulk strings; a reply is a simple string, an error, an integer,
//! a bulk string or an array of replies. That is all of RESP2 this needs.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior, timeout};
use uuid::Uuid;

use crate::runner::{Backend, OpOutcome};
use crate::workload::{Op, POOL, Plan};

/// The least room made in the read buffer before each read.
const READ_CHUNK: usize = 16 * 1024;
/// The largest bulk string or array accepted in a reply.
const MAX_REPLY_LEN: i64 = 512 * 1024 * 1024;
/// The deepest nesting of arrays accepted in a reply.
const MAX_DEPTH: usize = 8;

/// Where Redis listens and how the model uses it.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// A loopback address.
    pub addr: SocketAddr,
    /// How far in the future a register or heartbeat sets an instance's expiry.
    pub ttl: Duration,
}

/// A reply, as RESP2 has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`
    Error(String),
    /// `:1`
    Integer(i64),
    /// `$3\r\nabc`, or `$-1` (none).
    Bulk(Option<Vec<u8>>),
    /// `*2\r\n...`, or `*-1` (none).
    Array(Option<Vec<Reply>>),
}

/// Appends a command, an array of bulk strings, to `buf`.
pub fn command(buf: &mut BytesMut, args: &[&[u8]]) {
    buf.put_u8(b'*');
    put_decimal(buf, args.len() as u64);
    buf.put_slice(b"\r\n");
    for arg in args {
        buf.put_u8(b'$');
        put_decimal(buf, arg.len() as u64);
        buf.put_slice(b"\r\n");
        buf.put_slice(arg);
        buf.put_slice(b"\r\n");
    }
}

fn put_decimal(buf: &mut BytesMut, n: u64) {
    let mut digits = [0u8; 20];
    buf.put_slice(decimal(n, &mut digits));
}

/// `n` in decimal, written at the end of `digits`.
fn decimal(mut n: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &digits[at..];
        }
    }
}

/// Parses one reply at the start of `buf`: `Ok(None)` when more bytes are needed, else the
/// reply and the number of bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    parse_at(buf, 0, 0)
}

fn parse_at(buf: &[u8], at: usize, depth: usize) -> Result<Option<(Reply, usize)>, String> {
    let Some((line, next)) = line_at(buf, at) else {
        return Ok(None);
    };
    let (&kind, rest) = line.split_first().ok_or("an empty reply line")?;
    let text = || String::from_utf8_lossy(rest).into_owned();
    let number = || -> Result<i64, String> {
        std::str::from_utf8(rest)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("not a number: {:?}", text()))
    };
    match kind {
        b'+' => Ok(Some((Reply::Simple(text()), next))),
        b'-' => Ok(Some((Reply::Error(text()), next))),
        b':' => Ok(Some((Reply::Integer(number()?), next))),
        b'$' => match number()? {
            -1 => Ok(Some((Reply::Bulk(None), next))),
            len @ 0..=MAX_REPLY_LEN => {
                let end = next + len as usize;
                if buf.len() < end + 2 {
                    return Ok(None);
                }
                if &buf[end..end + 2] != b"\r\n" {
                    return Err("a bulk string not followed by CRLF".into());
                }
                Ok(Some((Reply::Bulk(Some(buf[next..end].to_vec())), end + 2)))
            }
            len => Err(format!("bulk length {len}")),
        },
        b'*' => match number()? {
            -1 => Ok(Some((Reply::Array(None), next))),
            len @ 0..=MAX_REPLY_LEN if depth < MAX_DEPTH => {
                let mut items = Vec::with_capacity((len as usize).min(1024));
                let mut at = next;
                for _ in 0..len {
                    let Some((item, after)) = parse_at(buf, at, depth + 1)? else {
                        return Ok(None);
                    };
                    items.push(item);
                    at = after;
                }
                Ok(Some((Reply::Array(Some(items)), at)))
            }
            len => Err(format!("array length {len} at depth {depth}")),
        },
        other => Err(format!("unknown reply type {:?}", other as char)),
    }
}

/// The line that starts at `at` without its CRLF, and where the next one starts.
fn line_at(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(at..)?;
    let end = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((&rest[..end], at + end + 2))
}

/// Milliseconds since the epoch, the clock of the scores.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What an operation pushed waits for.
enum Pending {
    /// One `ZADD` reply, for the seed instance with this member.
    Seed(String),
    /// This many replies.
    Replies(usize),
}

/// One connection to Redis.
pub struct RedisClient {
    stream: TcpStream,
    read_buf: BytesMut,
    write_buf: BytesMut,
    pending: VecDeque<Pending>,
    plan: Arc<Plan>,
    /// `svc:{type}` for each type of the plan.
    keys: Vec<String>,
    conn: usize,
    ttl_ms: u64,
    /// The member this connection last registered in each pool slot.
    pool: Vec<Option<String>>,
}

impl RedisClient {
    async fn open(config: RedisConfig, plan: Arc<Plan>, conn: usize) -> Result<Self, String> {
        let addr = config.addr;
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to Redis at {addr}: {e}"))?;
        stream
            .set_nodelay(true)
            .map_err(|e| format!("cannot set TCP_NODELAY: {e}"))?;
        let keys = plan.types.iter().map(|t| format!("svc:{t}")).collect();
        Ok(Self {
            stream,
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            write_buf: BytesMut::with_capacity(READ_CHUNK),
            pending: VecDeque::new(),
            plan,
            keys,
            conn,
            ttl_ms: u64::try_from(config.ttl.as_millis()).unwrap_or(u64::MAX / 2),
            pool: vec![None; POOL],
        })
    }

    /// Buffers one command.
    fn command(&mut self, args: &[&[u8]]) {
        command(&mut self.write_buf, args);
    }

    /// Reads one reply.
    async fn reply(&mut self) -> io::Result<Reply> {
        loop {
            match parse(&self.read_buf) {
                Ok(Some((reply, used))) => {
                    let _ = self.read_buf.split_to(used);
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            self.read_buf.reserve(READ_CHUNK);
            if self.stream.read_buf(&mut self.read_buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    fn new_member(ip: IpAddr, port: u16) -> String {
        format!("{}|{ip}:{port}", Uuid::new_v4())
    }
}

impl Backend for RedisClient {
    type Config = RedisConfig;
    type Handle = String;

    const NAME: &'static str = "redis";

    async fn connect(config: RedisConfig, plan: Arc<Plan>, conn: usize) -> Result<Self, String> {
        Self::open(config, plan, conn).await
    }

    /// Deletes the keys of the plan's types, so that an earlier run's members (whose ids
    /// this run does not know) do not linger in the sets.
    async fn prepare(&mut self) -> Result<(), String> {
        let keys = self.keys.clone();
        for chunk in keys.chunks(256) {
            let mut args: Vec<&[u8]> = vec![b"DEL"];
            args.extend(chunk.iter().map(|k| k.as_bytes()));
            self.command(&args);
            self.flush().await.map_err(|e| format!("DEL: {e}"))?;
            match self.reply().await.map_err(|e| format!("DEL: {e}"))? {
                Reply::Integer(_) => {}
                other => return Err(format!("DEL answered {other:?}")),
            }
        }
        Ok(())
    }

    fn server_ttl(&self) -> Option<Duration> {
        None
    }

    fn push(&mut self, op: Op, handles: &[String]) {
        let mut digits = [0u8; 20];
        match op {
            Op::Seed(i) => {
                let (t, ip, port) = self.plan.seed(i);
                let member = Self::new_member(ip, port);
                let score = decimal(now_ms() + self.ttl_ms, &mut digits);
                command(
                    &mut self.write_buf,
                    &[b"ZADD", self.keys[t].as_bytes(), score, member.as_bytes()],
                );
                self.pending.push_back(Pending::Seed(member));
            }
            Op::Register(slot) => {
                let (t, ip, port) = self.plan.pool(self.conn, slot);
                let member = Self::new_member(ip, port);
                let key = self.keys[t].as_bytes();
                let score = decimal(now_ms() + self.ttl_ms, &mut digits);
                command(
                    &mut self.write_buf,
                    &[b"ZADD", key, score, member.as_bytes()],
                );
                let replies = match self.pool[slot].replace(member) {
                    Some(old) => {
                        command(&mut self.write_buf, &[b"ZREM", key, old.as_bytes()]);
                        2
                    }
                    None => 1,
                };
                self.pending.push_back(Pending::Replies(replies));
            }
            Op::Heartbeat(i) => {
                let key = self.keys[i % self.keys.len()].as_bytes();
                let score = decimal(now_ms() + self.ttl_ms, &mut digits);
                command(
                    &mut self.write_buf,
                    &[b"ZADD", key, b"XX", score, handles[i].as_bytes()],
                );
                self.pending.push_back(Pending::Replies(1));
            }
            Op::Query(t) => {
                let now = decimal(now_ms(), &mut digits);
                command(
                    &mut self.write_buf,
                    &[b"ZRANGEBYSCORE", self.keys[t].as_bytes(), now, b"+inf"],
                );
                self.pending.push_back(Pending::Replies(1));
            }
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.stream.write_all(&self.write_buf).await?;
        self.write_buf.clear();
        Ok(())
    }

    async fn answer(&mut self, op: Op) -> io::Result<OpOutcome<String>> {
        let pending = self
            .pending
            .pop_front()
            .ok_or_else(|| io::Error::other("an answer was awaited for no request"))?;
        let (replies, member) = match pending {
            Pending::Seed(member) => (1, Some(member)),
            Pending::Replies(n) => (n, None),
        };
        let mut failure = None;
        let mut items = 0;
        // Every reply is read, even after an error, to stay in step.
        for _ in 0..replies {
            match self.reply().await? {
                Reply::Error(e) => failure = Some(format!("{op:?}: {e}")),
                Reply::Array(Some(members)) => items = members.len(),
                _ => {}
            }
        }
        Ok(match (failure, member) {
            (Some(why), _) => OpOutcome::Failed(why),
            (None, Some(member)) => OpOutcome::Seeded(member),
            (None, None) => OpOutcome::Done { items },
        })
    }

    fn background(
        config: &RedisConfig,
        plan: Arc<Plan>,
        stop: Instant,
        io_timeout: Duration,
    ) -> Option<JoinHandle<Result<String, String>>> {
        let config = config.clone();
        Some(tokio::spawn(reap(config, plan, stop, io_timeout)))
    }
}

/// The reaper: once a second until `stop`, removes the expired members of every type.
async fn reap(
    config: RedisConfig,
    plan: Arc<Plan>,
    stop: Instant,
    io_timeout: Duration,
) -> Result<String, String> {
    let mut client = RedisClient::open(config, plan, usize::MAX).await?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let (mut passes, mut removed) = (0u64, 0i64);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = tokio::time::sleep_until(stop) => break,
        }
        let pass = async {
            let mut digits = [0u8; 20];
            let keys = std::mem::take(&mut client.keys);
            let now = decimal(now_ms(), &mut digits);
            for key in &keys {
                client.command(&[b"ZREMRANGEBYSCORE", key.as_bytes(), b"-inf", now]);
            }
            client.keys = keys;
            client.flush().await?;
            let mut gone = 0;
            for _ in 0..client.keys.len() {
                match client.reply().await? {
                    Reply::Integer(n) => gone += n,
                    other => return Err(io::Error::other(format!("reaper: {other:?}"))),
                }
            }
            Ok::<_, io::Error>(gone)
        };
        match timeout(io_timeout, pass).await {
            Ok(Ok(gone)) => removed += gone,
            Ok(Err(e)) => return Err(format!("reaper: {e}")),
            Err(_) => return Err(format!("reaper: no answer within {io_timeout:?}")),
        }
        passes += 1;
    }
    Ok(format!(
        "reaper: {passes} passes, {removed} members removed"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut buf = BytesMut::new();
        command(
            &mut buf,
            &[b"ZADD", b"svc:a", b"1700000000000", b"id|127.0.0.1:80"],
        );
        assert_eq!(
            &buf[..],
            b"*4\r\n$4\r\nZADD\r\n$5\r\nsvc:a\r\n$13\r\n1700000000000\r\n$15\r\nid|127.0.0.1:80\r\n"
        );
        let mut digits = [0u8; 20];
        assert_eq!(decimal(0, &mut digits), b"0");
        assert_eq!(decimal(u64::MAX, &mut digits), b"18446744073709551615");
    }

    #[test]
    fn every_reply_kind_parses() {
        let cases: [(&[u8], Reply); 7] = [
            (b"+OK\r\n", Reply::Simple("OK".into())),
            (b"-ERR wrong\r\n", Reply::Error("ERR wrong".into())),
            (b":-12\r\n", Reply::Integer(-12)),
            (b"$3\r\na\r\n\r\n", Reply::Bulk(Some(b"a\r\n".to_vec()))),
            (b"$-1\r\n", Reply::Bulk(None)),
            (b"*-1\r\n", Reply::Array(None)),
            (
                b"*3\r\n$1\r\nx\r\n:1\r\n*0\r\n",
                Reply::Array(Some(vec![
                    Reply::Bulk(Some(b"x".to_vec())),
                    Reply::Integer(1),
                    Reply::Array(Some(vec![])),
                ])),
            ),
        ];
        for (bytes, reply) in cases {
            let mut with_more = bytes.to_vec();
            with_more.extend_from_slice(b"+next\r\n");
            assert_eq!(parse(&with_more), Ok(Some((reply, bytes.len()))));
            // Every proper prefix asks for more.
            for cut in 0..bytes.len() {
                assert_eq!(parse(&bytes[..cut]), Ok(None), "{bytes:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [
            &b"?x\r\n"[..],
            b":abc\r\n",
            b"$-2\r\n",
            b"$1\r\nab\r\n",
            b"*99999999999\r\n",
            b"\r\n",
        ] {
            assert!(parse(bytes).is_err(), "{bytes:?}");
        }
        let deep = "*1\r\n".repeat(MAX_DEPTH + 1) + ":1\r\n";
        assert!(parse(deep.as_bytes()).is_err());
    }
}
