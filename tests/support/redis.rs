//! A real `redis-server` on a loopback address, without persistence.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use tempfile::TempDir;

use crate::ports::free_port;
use crate::process::{
    find_program, poll_until, probe_child, read_lossy, ChildGuard, Probe, STARTUP_TIMEOUT,
};

/// A running redis-server, killed on drop.
#[derive(Debug)]
pub struct Redis {
    addr: SocketAddr,
    // Field order: the process dies before its directory is removed.
    child: ChildGuard,
    dir: TempDir,
}

impl Redis {
    /// Starts redis-server on `ip` (free port) and waits until `PING` answers `+PONG`; the
    /// readiness polling runs on a blocking thread.
    ///
    /// # Panics
    /// When redis-server is missing or does not start (the message includes its log).
    pub async fn start(ip: IpAddr) -> Redis {
        tokio::task::spawn_blocking(move || Self::try_start(ip))
            .await
            .expect("the redis start-up task")
            .unwrap_or_else(|e| panic!("redis-server did not start: {e:#}"))
    }

    /// Like [`Redis::start`], returning the error; blocks the calling thread.
    pub fn try_start(ip: IpAddr) -> anyhow::Result<Redis> {
        let program = find_program("redis-server")?;
        let dir = tempfile::Builder::new()
            .prefix("underpass-redis-")
            .tempdir()
            .context("create tempdir")?;
        let logfile = dir.path().join("redis.log");
        for _attempt in 0..5 {
            let addr = SocketAddr::new(ip, free_port(ip));
            let mut command = Command::new(&program);
            command
                .args(["--port", &addr.port().to_string()])
                .args(["--bind", &ip.to_string()])
                .args(["--save", ""])
                .args(["--appendonly", "no"])
                .args(["--daemonize", "no"])
                .args(["--protected-mode", "no"])
                .arg("--dir")
                .arg(dir.path())
                .arg("--logfile")
                .arg(&logfile);
            let mut child = ChildGuard::spawn(command, "redis", dir.path())?;
            let probe = poll_until("redis-server", STARTUP_TIMEOUT, || {
                probe_child(&mut child, || read_lossy(&logfile), || ping(addr).is_ok())
            });
            match probe {
                Ok(Probe::Ready) => return Ok(Redis { addr, child, dir }),
                Ok(Probe::AddrInUse) => continue,
                Ok(other) => bail!("{other:?}\n{}", child.output()),
                Err(e) => bail!("{e}\n{}\n{}", read_lossy(&logfile), child.output()),
            }
        }
        bail!("address in use on {ip} five times in a row")
    }

    /// The address redis listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's log file contents.
    pub fn log(&self) -> String {
        read_lossy(&self.dir.path().join("redis.log"))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Sends `PING` on a new connection and checks the reply is `+PONG`.
pub fn ping(addr: SocketAddr) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"PING\r\n")?;
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply)?;
    if &reply != b"+PONG\r\n" {
        bail!("PING answered {:?}", String::from_utf8_lossy(&reply));
    }
    Ok(())
}
