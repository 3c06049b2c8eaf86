//! A throwaway Redis Cluster on loopback ports, for tests and benchmarks.
//!
//! [`TestCluster::start`] runs `redis-server --cluster-enabled yes` once per node in a
//! temporary folder, joins them with `redis-cli --cluster create`, and waits for
//! `cluster_state:ok`. Each server runs under a small shell watchdog that kills it when the
//! process that started it is gone, so servers never outlive a test binary, even one that
//! panics, aborts or is killed; dropping the handle stops them at once.

use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a cluster may take to form or to fail over before the helper gives up.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Settings every node gets. Snapshots and the append-only file stay off (a test cluster
/// is thrown away; durability comes from replicas and `WAIT`); a 2 s node timeout makes a
/// failover take seconds. The hash limits keep buckets in Redis's compact listpack
/// encoding (see the crate docs and README).
const NODE_SETTINGS: &[&str] = &[
    "--cluster-enabled",
    "yes",
    "--cluster-node-timeout",
    "2000",
    "--appendonly",
    "no",
    "--save",
    "",
    "--daemonize",
    "no",
    "--protected-mode",
    "no",
    "--bind",
    "127.0.0.1",
    "--hash-max-listpack-entries",
    "512",
    "--hash-max-listpack-value",
    "1024",
];

/// Created in the cluster's folder to stop every node.
const STOP_FILE: &str = "stop";

/// One node of a [`TestCluster`].
struct Node {
    port: u16,
    watchdog: Child,
}

/// A running cluster, stopped when dropped.
pub struct TestCluster {
    dir: PathBuf,
    nodes: Vec<Node>,
}

impl TestCluster {
    /// Starts `masters` masters with `replicas` replicas each and waits until the cluster
    /// serves every slot (and every replica is in sync). Tries three times, since another
    /// process may take a port between the check that it is free and the server's bind.
    pub fn start(masters: usize, replicas: usize) -> io::Result<Self> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::start_once(masters, replicas) {
                Err(error) if attempt < 3 => {
                    eprintln!("testcluster: starting failed ({error}); trying other ports");
                }
                result => return result,
            }
        }
    }

    fn start_once(masters: usize, replicas: usize) -> io::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "cratedigger-redis-{}-{:08x}",
            std::process::id(),
            rand_u32()
        ));
        std::fs::create_dir_all(&dir)?;
        let mut cluster = Self {
            dir,
            nodes: Vec::new(),
        };
        let n_nodes = masters * (1 + replicas);
        for _ in 0..n_nodes {
            let port = free_port()?;
            let watchdog = spawn_watched(&cluster.dir, port)?;
            cluster.nodes.push(Node { port, watchdog });
        }
        for node in &cluster.nodes {
            wait_until(&format!("node {} answers", node.port), || {
                cli(node.port, &["PING"]).is_ok_and(|out| out.trim() == "PONG")
            })?;
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        create
            .arg("--cluster-replicas")
            .arg(replicas.to_string())
            .arg("--cluster-yes");
        let output = create.stdin(Stdio::null()).output()?;
        if !output.status.success() {
            return Err(io::Error::other(format!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&output.stdout)
            )));
        }
        // `cluster create` returns before every replica has taken its role: until then a
        // replica-to-be reports `role:master`, and a store opened then sees its master
        // without a replica.
        let expected = masters * replicas;
        wait_until(
            &format!("{expected} replicas have taken their role"),
            || {
                cluster
                    .nodes
                    .iter()
                    .filter(|node| {
                        cli(node.port, &["INFO", "replication"])
                            .is_ok_and(|out| out.contains("role:slave"))
                    })
                    .count()
                    == expected
            },
        )?;
        cluster.wait_healthy()?;
        Ok(cluster)
    }

    /// A store URL naming every node, with extra `options` (`key=value&...`) appended.
    pub fn url(&self, options: &str) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        if options.is_empty() {
            format!("redis://{}", hosts.join(","))
        } else {
            format!("redis://{}?{options}", hosts.join(","))
        }
    }

    /// Ports of all nodes still running.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|node| node.port).collect()
    }

    /// The port of the master serving `key` (asked of any live node).
    pub fn master_of(&self, key: &str) -> io::Result<u16> {
        let port = self.any_port()?;
        let slot: u16 = cli(port, &["CLUSTER", "KEYSLOT", key])?
            .trim()
            .parse()
            .map_err(io::Error::other)?;
        let nodes = cli(port, &["CLUSTER", "NODES"])?;
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| {
                let (start, end) = range.split_once('-').unwrap_or((range, range));
                match (start.parse::<u16>(), end.parse::<u16>()) {
                    (Ok(start), Ok(end)) => (start..=end).contains(&slot),
                    _ => false,
                }
            });
            if serves {
                let address = fields[1].split('@').next().unwrap_or_default();
                return address
                    .rsplit_once(':')
                    .and_then(|(_, port)| port.parse().ok())
                    .ok_or_else(|| io::Error::other(format!("odd node address {address}")));
            }
        }
        Err(io::Error::other(format!("no master serves slot {slot}")))
    }

    /// Kills the node on `port` with SIGKILL, as a crash would, and forgets it.
    pub fn kill(&mut self, port: u16) -> io::Result<()> {
        let pid = info_field(port, "server", "process_id")?;
        Command::new("kill").arg("-9").arg(pid).status()?;
        if let Some(position) = self.nodes.iter().position(|node| node.port == port) {
            let mut node = self.nodes.remove(position);
            // The watchdog sees its server gone and exits.
            let _ = node.watchdog.wait();
        }
        Ok(())
    }

    /// Starts a node that [`TestCluster::kill`] stopped again, on its port and with its
    /// cluster configuration, as an operator replaces a failed machine: a master that has
    /// been failed over rejoins as a replica of its successor. Waits until it has taken
    /// that role and the cluster is healthy.
    pub fn restart(&mut self, port: u16) -> io::Result<()> {
        let watchdog = spawn_watched(&self.dir, port)?;
        self.nodes.push(Node { port, watchdog });
        wait_until(&format!("node {port} rejoins as a replica"), || {
            cli(port, &["INFO", "replication"]).is_ok_and(|out| out.contains("role:slave"))
        })?;
        self.wait_healthy()
    }

    /// Waits until every live node reports `cluster_state:ok` and every live replica is
    /// linked to its master and holds its data (no sync in progress).
    pub fn wait_healthy(&self) -> io::Result<()> {
        for node in &self.nodes {
            wait_until(
                &format!("node {} reports cluster_state:ok", node.port),
                || {
                    cli(node.port, &["CLUSTER", "INFO"])
                        .is_ok_and(|out| out.contains("cluster_state:ok"))
                },
            )?;
            wait_until(&format!("node {} is in sync", node.port), || {
                cli(node.port, &["INFO", "replication"]).is_ok_and(|out| {
                    out.contains("role:master")
                        || (out.contains("master_link_status:up")
                            && out.contains("master_sync_in_progress:0"))
                })
            })?;
        }
        Ok(())
    }

    /// Sum of `used_memory` over the masters, in bytes.
    pub fn used_memory_bytes(&self) -> io::Result<u64> {
        let mut total = 0;
        for node in &self.nodes {
            if info_field(node.port, "replication", "role")? != "master" {
                continue;
            }
            total += info_field(node.port, "memory", "used_memory")?
                .parse::<u64>()
                .map_err(io::Error::other)?;
        }
        Ok(total)
    }

    /// The port of a replica of the master on `master` (its first, as `INFO
    /// replication` lists them).
    pub fn replica_of(&self, master: u16) -> io::Result<u16> {
        info_field(master, "replication", "slave0")?
            .split(',')
            .find_map(|part| part.strip_prefix("port="))
            .and_then(|port| port.parse().ok())
            .ok_or_else(|| io::Error::other(format!("node {master} lists no replica")))
    }

    fn any_port(&self) -> io::Result<u16> {
        self.nodes
            .iter()
            .map(|node| node.port)
            .find(|&port| cli(port, &["PING"]).is_ok())
            .ok_or_else(|| io::Error::other("no node answers"))
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        // The stop file tells every watchdog to kill its server and exit.
        let _ = std::fs::write(self.dir.join(STOP_FILE), b"");
        for node in &mut self.nodes {
            let _ = node.watchdog.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `redis-server` on `port` under a shell that kills it once this process is gone.
fn spawn_watched(dir: &Path, port: u16) -> io::Result<Child> {
    let mut server = vec![
        "redis-server".to_owned(),
        "--port".to_owned(),
        port.to_string(),
        "--cluster-config-file".to_owned(),
        format!("nodes-{port}.conf"),
        "--dir".to_owned(),
        dir.display().to_string(),
        "--logfile".to_owned(),
        format!("redis-{port}.log"),
    ];
    server.extend(NODE_SETTINGS.iter().map(|s| (*s).to_owned()));
    let quoted: Vec<String> = server.iter().map(|arg| shell_quote(arg)).collect();
    let script = format!(
        "{} & server=$!\n\
         while kill -0 {parent} 2>/dev/null && kill -0 $server 2>/dev/null \\\n\
           && [ ! -e {stop} ]; do sleep 0.2; done\n\
         kill -9 $server 2>/dev/null\n\
         wait $server 2>/dev/null\n",
        quoted.join(" "),
        parent = std::process::id(),
        stop = shell_quote(&dir.join(STOP_FILE).display().to_string()),
    );
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}

fn shell_quote(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', r"'\''"))
}

/// One field of a node's `INFO SECTION` (`process_id` of `server`, say), trimmed.
pub fn info_field(port: u16, section: &str, field: &str) -> io::Result<String> {
    let prefix = format!("{field}:");
    cli(port, &["INFO", section])?
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(|value| value.trim().to_owned())
        .ok_or_else(|| io::Error::other(format!("INFO {section} of node {port} shows no {field}")))
}

/// Runs `redis-cli -p PORT ARGS...` and returns its output.
pub fn cli(port: u16, args: &[&str]) -> io::Result<String> {
    let output = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()?;
    if !output.status.success() {
        return Err(io::Error::other(format!("redis-cli -p {port} failed")));
    }
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if text.starts_with("Could not connect") || text.starts_with("Error") {
        return Err(io::Error::other(text));
    }
    Ok(text)
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) -> io::Result<()> {
    let started = Instant::now();
    while !done() {
        if started.elapsed() > SETTLE_TIMEOUT {
            return Err(io::Error::other(format!("timed out waiting until {what}")));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// A loopback port that is free, and whose cluster bus port (+10000) is free too.
fn free_port() -> io::Result<u16> {
    for _ in 0..200 {
        let port = 20_000 + (rand_u32() % 30_000) as u16;
        let free = |port: u16| TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok();
        if free(port) && free(port + 10_000) {
            return Ok(port);
        }
    }
    Err(io::Error::other("found no free pair of loopback ports"))
}

/// A cheap random number for port choice, seeded from the clock and the process id.
fn rand_u32() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos());
    let mut x = nanos
        ^ std::process::id().rotate_left(16)
        ^ COUNTER.fetch_add(0x9E37_79B9, Ordering::Relaxed);
    // xorshift32 scrambles the bits so nearby seeds give far-apart ports.
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    x
}
