//! Node isolation through Linux network namespaces: each node runs in its own namespace
//! with one veth leg on a shared bridge; the harness (root namespace) owns the bridge
//! address, so isolating a node drops its traffic to and from the other nodes while the
//! harness's clients still reach it, like a partition between racks.

use std::net::Ipv4Addr;
use std::process::Command;

/// Runs `ip`/`iptables` and reports its stderr on failure.
fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program).args(args).output()?;
    if !out.status.success() {
        anyhow::bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub struct Netns {
    /// Unique to this run: namespace, bridge and veth names start with it.
    tag: String,
    subnet: [u8; 3],
    nodes: usize,
}

impl Netns {
    /// Creates the bridge and one namespace per node; removes what it made on failure.
    pub fn create(nodes: usize) -> anyhow::Result<Netns> {
        let pid = std::process::id();
        let tag = format!("nxc{}", pid % 10_000_000);
        let used =
            String::from_utf8_lossy(&Command::new("ip").args(["-o", "addr"]).output()?.stdout)
                .to_string();
        let subnet = (0..250u32)
            .map(|k| {
                [
                    10,
                    200 + ((pid + k) % 50) as u8,
                    ((pid / 50 + k) % 250) as u8,
                ]
            })
            .find(|s| !used.contains(&format!(" {}.{}.{}.", s[0], s[1], s[2])))
            .ok_or_else(|| anyhow::anyhow!("no free 10.x.y.0/24 subnet"))?;
        let net = Netns {
            tag,
            subnet,
            nodes: 0,
        };
        let mut net = net;
        net.build(nodes)?;
        Ok(net)
    }

    fn build(&mut self, nodes: usize) -> anyhow::Result<()> {
        let bridge = self.bridge();
        run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        run("ip", &["link", "set", &bridge, "up"])?;
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/24", self.harness_ip()),
                "dev",
                &bridge,
            ],
        )?;
        for i in 0..nodes {
            let ns = self.namespace(i);
            let host_leg = format!("{}h{i}", self.tag);
            run("ip", &["netns", "add", &ns])?;
            self.nodes = i + 1;
            run(
                "ip",
                &[
                    "link", "add", &host_leg, "type", "veth", "peer", "name", "eth0", "netns", &ns,
                ],
            )?;
            run("ip", &["link", "set", &host_leg, "master", &bridge, "up"])?;
            let addr = format!("{}/24", self.node_ip(i));
            run("ip", &["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
            run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        }
        // Isolation needs iptables inside the namespaces: find out now, not mid-run.
        run(
            "ip",
            &["netns", "exec", &self.namespace(0), "iptables", "-S"],
        )?;
        Ok(())
    }

    fn bridge(&self) -> String {
        format!("{}br", self.tag)
    }

    pub fn namespace(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }

    pub fn node_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(self.subnet[0], self.subnet[1], self.subnet[2], i as u8 + 1)
    }

    fn harness_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.subnet[0], self.subnet[1], self.subnet[2], 254)
    }

    /// Drops node `i`'s traffic to and from every other node; the harness still reaches it.
    pub fn isolate(&self, i: usize) -> anyhow::Result<()> {
        let ns = self.namespace(i);
        let harness = self.harness_ip().to_string();
        let subnet = format!(
            "{}.{}.{}.0/24",
            self.subnet[0], self.subnet[1], self.subnet[2]
        );
        for (chain, dir) in [("INPUT", "-s"), ("OUTPUT", "-d")] {
            let ipt = |rule: &[&str]| {
                let mut args = vec!["netns", "exec", &ns, "iptables", "-A", chain];
                args.extend_from_slice(rule);
                run("ip", &args)
            };
            ipt(&[dir, &harness, "-j", "ACCEPT"])?;
            ipt(&[dir, &subnet, "-j", "DROP"])?;
        }
        Ok(())
    }

    /// Lifts `isolate`.
    pub fn heal(&self, i: usize) -> anyhow::Result<()> {
        run(
            "ip",
            &["netns", "exec", &self.namespace(i), "iptables", "-F"],
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for i in 0..self.nodes {
            let _ = run("ip", &["netns", "del", &self.namespace(i)]);
        }
        let _ = run("ip", &["link", "del", &self.bridge()]);
    }
}
