//! A real DNS server (dnsmasq) on a loopback address, answering only from the records given.
//!
//! Behaviour (dnsmasq 2.90, `--no-resolv`): a name given a record answers it (A and/or AAAA);
//! the other address family of that name answers NOERROR with no data; any name at or below
//! [`Dnsmasq::NX_DOMAIN`] or a domain passed to [`DnsmasqBuilder::nxdomain`] answers NXDOMAIN;
//! every other name answers REFUSED (there is no upstream to ask).

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use tempfile::TempDir;

use crate::dns::{self, DnsAnswer, RecordType};
use crate::ports::free_tcp_udp_port;
use crate::process::{
    find_program, poll_until, probe_child, read_lossy, tcp_accepts, ChildGuard, Probe,
    STARTUP_TIMEOUT,
};

/// A running dnsmasq, killed on drop.
#[derive(Debug)]
pub struct Dnsmasq {
    addr: SocketAddr,
    // Field order: the process dies before its directory is removed.
    child: ChildGuard,
    dir: TempDir,
}

/// Configures a [`Dnsmasq`].
#[derive(Debug, Clone)]
pub struct DnsmasqBuilder {
    ip: IpAddr,
    records: Vec<(String, IpAddr)>,
    nxdomains: Vec<String>,
}

impl Dnsmasq {
    /// Every name at or below this domain answers NXDOMAIN.
    pub const NX_DOMAIN: &'static str = "nx.test";
    /// A name that answers NXDOMAIN.
    pub const NX_NAME: &'static str = "does-not-exist.nx.test";

    /// A builder for a server listening on `ip` (UDP and TCP, port chosen free).
    pub fn builder(ip: IpAddr) -> DnsmasqBuilder {
        DnsmasqBuilder {
            ip,
            records: Vec::new(),
            nxdomains: Vec::new(),
        }
    }

    /// The address the server answers on (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The query log (`--log-queries`), to check which names were asked.
    pub fn log(&self) -> String {
        read_lossy(&self.dir.path().join("dnsmasq.log"))
    }

    /// Asks the server for `name` (see [`dns::query`], run on a blocking thread).
    pub async fn query(&self, name: &str, rtype: RecordType) -> anyhow::Result<DnsAnswer> {
        let (addr, name) = (self.addr, name.to_owned());
        tokio::task::spawn_blocking(move || dns::query(addr, &name, rtype, Duration::from_secs(2)))
            .await
            .context("the DNS query task")?
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl DnsmasqBuilder {
    /// Adds an A (IPv4) or AAAA (IPv6) record; call again for more addresses of one name.
    pub fn record(mut self, name: &str, ip: IpAddr) -> Self {
        self.records.push((name.to_owned(), ip));
        self
    }

    /// Makes `domain` and every name below it answer NXDOMAIN (unless given a record).
    pub fn nxdomain(mut self, domain: &str) -> Self {
        self.nxdomains.push(domain.to_owned());
        self
    }

    /// Starts dnsmasq and waits until it answers a query; the readiness polling runs on a
    /// blocking thread.
    ///
    /// # Panics
    /// When dnsmasq is missing or does not start (the message includes its output).
    pub async fn start(self) -> Dnsmasq {
        tokio::task::spawn_blocking(move || self.try_start())
            .await
            .expect("the dnsmasq start-up task")
            .unwrap_or_else(|e| panic!("dnsmasq did not start: {e:#}"))
    }

    /// Like [`DnsmasqBuilder::start`], returning the error; blocks the calling thread.
    pub fn try_start(self) -> anyhow::Result<Dnsmasq> {
        let program = find_program("dnsmasq")?;
        let dir = tempfile::Builder::new()
            .prefix("underpass-dnsmasq-")
            .tempdir()
            .context("create tempdir")?;
        for _attempt in 0..5 {
            let port = free_tcp_udp_port(self.ip);
            let addr = SocketAddr::new(self.ip, port);
            let mut command = Command::new(&program);
            command.args(self.args(addr, &dir));
            let mut child = ChildGuard::spawn(command, "dnsmasq", dir.path())?;
            let log = || {
                let stderr = read_lossy(&dir.path().join("dnsmasq.stderr"));
                format!("{stderr}\n{}", read_lossy(&dir.path().join("dnsmasq.log")))
            };
            let probe = poll_until("dnsmasq", STARTUP_TIMEOUT, || {
                probe_child(&mut child, log, || {
                    dns::query(
                        addr,
                        Dnsmasq::NX_NAME,
                        RecordType::A,
                        Duration::from_millis(200),
                    )
                    .is_ok_and(|a| a.rcode == dns::NXDOMAIN)
                        && tcp_accepts(addr)
                })
            });
            match probe {
                Ok(Probe::Ready) => return Ok(Dnsmasq { addr, child, dir }),
                Ok(Probe::AddrInUse) => continue,
                Ok(other) => bail!("{other:?}\n{}", child.output()),
                Err(e) => bail!("{e}\n{}", child.output()),
            }
        }
        bail!("address in use on {} five times in a row", self.ip)
    }

    fn args(&self, addr: SocketAddr, dir: &TempDir) -> Vec<String> {
        let mut args = vec![
            "--no-daemon".to_owned(),
            "--conf-file=/dev/null".to_owned(),
            "--no-resolv".to_owned(),
            "--no-hosts".to_owned(),
            "--bind-interfaces".to_owned(),
            format!("--listen-address={}", addr.ip()),
            format!("--port={}", addr.port()),
            "--pid-file".to_owned(),
            "--user=root".to_owned(),
            "--log-queries".to_owned(),
            format!(
                "--log-facility={}",
                dir.path().join("dnsmasq.log").display()
            ),
            format!("--local=/{}/", Dnsmasq::NX_DOMAIN),
        ];
        for (name, ip) in &self.records {
            args.push(format!("--host-record={name},{ip}"));
            // Answer the other address family with "no data" rather than REFUSED.
            args.push(format!("--local=/{name}/"));
        }
        for domain in &self.nxdomains {
            args.push(format!("--local=/{domain}/"));
        }
        args
    }
}
