//! Two "regions" on one machine: network namespaces joined by an emulated wide-area link.
//!
//! The kernel here has no netem, so the link is a userspace wire: one TUN device in each
//! namespace, and two threads per direction in the test process that carry packets from one
//! to the other with a one-way delay, a rate limit (packets leave no faster than the rate,
//! queueing like a bottleneck router's buffer, whose overflow is dropped), random loss, and,
//! on demand, one flipped payload byte in a TCP segment (with its checksum fixed, so the
//! receiving kernel delivers the corruption instead of dropping the packet, as a faulty
//! middlebox would).
//!
//! Everything here needs root (namespaces, TUN): without it the test **fails** with a message
//! that says so, never skips.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Address of region A's end of the link.
pub const A_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);
/// Address of region B's end of the link.
pub const B_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 2);

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running `ip {}`: {e} (iproute2 is needed)", args.join(" ")));
    if !out.status.success() {
        panic!(
            "`ip {}` failed: {} (network namespaces need root; run the relay tests as root)",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
}

/// A network namespace, deleted (with everything in it) on drop.
pub struct Region {
    pub name: String,
}

impl Region {
    /// A new namespace with its loopback up.
    pub fn new(name: &str) -> Region {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        ip(&["netns", "add", name]);
        ip(&["-n", name, "link", "set", "lo", "up"]);
        Region {
            name: name.to_string(),
        }
    }

    /// A command that runs `program` inside this namespace (`ip netns exec`, which execs it:
    /// the child's pid is the program's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `f` on a thread that has entered this namespace: its sockets are the region's.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns(&self.name, f)
    }

    /// Runs a future on a fresh single-threaded runtime inside this namespace (for test
    /// set-up and checks with an independent S3 client).
    pub fn block_on<F, Fut, T>(&self, f: F) -> T
    where
        F: FnOnce() -> Fut + Send,
        Fut: std::future::Future<Output = T>,
        T: Send,
    {
        self.run(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(f())
        })
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Runs `f` on a new thread inside the named namespace.
pub fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = Path::new("/var/run/netns").join(name);
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(&path)
                .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
            // SAFETY: setns on a valid namespace fd; it affects only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns into {name}: {}", io::Error::last_os_error());
            f()
        })
        .join()
        .expect("thread in namespace panicked")
    })
}

/// The link's properties, per direction.
#[derive(Debug, Clone)]
pub struct LinkSpec {
    /// One-way delay (RTT is twice this).
    pub delay: Duration,
    /// Bits per second; 0 for no limit.
    pub rate_bps: u64,
    /// Probability that a packet is dropped.
    pub loss: f64,
    /// Most queueing delay before packets are dropped (a router buffer).
    pub queue: Duration,
    /// Flip one payload byte of the TCP segment that carries byte `after` of the A-to-B
    /// stream towards this port.
    pub flip: Option<Flip>,
}

impl LinkSpec {
    /// The wide-area link of the relay tests: 40 ms RTT, 200 Mbit/s, 0.1% loss.
    pub fn wan() -> LinkSpec {
        LinkSpec {
            delay: Duration::from_millis(20),
            rate_bps: 200_000_000,
            loss: 0.001,
            queue: Duration::from_millis(50),
            flip: None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Flip {
    pub dst_port: u16,
    /// TCP payload bytes towards `dst_port` to let through untouched first.
    pub after: u64,
}

/// What the wire did.
#[derive(Debug, Default)]
pub struct WireStats {
    pub packets: AtomicU64,
    /// IP bytes carried from A to B.
    pub bytes_a_to_b: AtomicU64,
    pub bytes_b_to_a: AtomicU64,
    pub lost: AtomicU64,
    pub queue_drops: AtomicU64,
    /// TCP payload bytes seen towards the flip port.
    pub flip_port_bytes: AtomicU64,
    pub flipped: AtomicU64,
}

/// Two regions joined by the emulated link. Stops its threads and deletes the namespaces
/// on drop.
pub struct Wan {
    pub a: Region,
    pub b: Region,
    /// The TUN device's name inside A (and `…b` inside B): where to capture.
    pub dev_a: String,
    pub stats: Arc<WireStats>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Wan {
    /// Makes regions `{tag}a` and `{tag}b` and the link between them, A at [`A_IP`], B at
    /// [`B_IP`]. `tag` must be unique among running tests (a few letters and digits).
    pub fn start(tag: &str, spec: LinkSpec) -> Wan {
        let a = Region::new(&format!("{tag}a"));
        let b = Region::new(&format!("{tag}b"));
        let (dev_a, dev_b) = (format!("{tag}ta"), format!("{tag}tb"));
        assert!(dev_a.len() <= 15, "tag {tag} too long for a device name");
        let fa = tun(&dev_a);
        let fb = tun(&dev_b);
        for (region, dev, addr) in [(&a, &dev_a, A_IP), (&b, &dev_b, B_IP)] {
            ip(&["link", "set", dev, "netns", &region.name]);
            ip(&[
                "-n",
                &region.name,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                dev,
            ]);
            ip(&["-n", &region.name, "link", "set", dev, "mtu", "1500", "up"]);
        }
        let stats = Arc::new(WireStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let fa = Arc::new(fa);
        let fb = Arc::new(fb);
        let mut threads = Vec::new();
        for (from, to, a_to_b) in [(fa.clone(), fb.clone(), true), (fb, fa, false)] {
            let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
            let spec = spec.clone();
            let (stats2, stop2) = (stats.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                ingress(&from, tx, &spec, a_to_b, &stats2, &stop2)
            }));
            let stop2 = stop.clone();
            threads.push(std::thread::spawn(move || egress(&to, rx, &stop2)));
        }
        Wan {
            a,
            b,
            dev_a,
            stats,
            stop,
            threads,
        }
    }

    /// Starts tcpdump on A's end of the link, writing every packet whole to `file`.
    pub fn capture(&self, file: &Path) -> Capture {
        let tcpdump = crate::tool("tcpdump");
        let mut child = self
            .a
            .command(tcpdump)
            .args(["-i", &self.dev_a, "-s", "0", "-U", "-n", "-w"])
            .arg(file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tcpdump");
        // tcpdump says "listening on …" once the capture is open.
        let mut err = child.stderr.take().expect("stderr");
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while !String::from_utf8_lossy(&seen).contains("listening on") {
            use std::io::Read;
            match err.read(&mut buf) {
                Ok(0) | Err(_) => {
                    panic!("tcpdump did not start: {}", String::from_utf8_lossy(&seen))
                }
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        Capture {
            child,
            _stderr: err,
        }
    }
}

impl Drop for Wan {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A running tcpdump; [`Capture::stop`] ends it and waits until the file is complete.
pub struct Capture {
    child: Child,
    _stderr: std::process::ChildStderr,
}

impl Capture {
    pub fn stop(mut self) {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tun(name: &str) -> OwnedFd {
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    // Non-blocking: the wire reads packets until the queue is empty and polls only then.
    // SAFETY: plain open of a device node.
    let fd = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    };
    assert!(
        fd >= 0,
        "open /dev/net/tun: {} (the relay tests need root and TUN)",
        io::Error::last_os_error()
    );
    // SAFETY: fd was just opened and is owned from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReq {
        name: [0; 16],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF with a properly sized ifreq.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut req) };
    assert_eq!(rc, 0, "TUNSETIFF {name}: {}", io::Error::last_os_error());
    fd
}

/// Reads packets entering the link, decides their fate and departure time.
fn ingress(
    from: &OwnedFd,
    tx: mpsc::Sender<(Instant, Vec<u8>)>,
    spec: &LinkSpec,
    a_to_b: bool,
    stats: &WireStats,
    stop: &AtomicBool,
) {
    let mut last_departure = Instant::now();
    let mut buf = vec![0u8; 65536];
    let per_byte = if spec.rate_bps > 0 {
        8.0 / spec.rate_bps as f64
    } else {
        0.0
    };
    let mut flipped = false;
    while !stop.load(Relaxed) {
        // SAFETY: reading into an owned buffer of its length.
        let n = unsafe { libc::read(from.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            // Empty (EAGAIN): wait for the next packet, waking now and then to see `stop`.
            let mut pfd = libc::pollfd {
                fd: from.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, 50) };
            continue;
        }
        let mut pkt = buf[..n as usize].to_vec();
        stats.packets.fetch_add(1, Relaxed);
        if spec.loss > 0.0 && rand::random::<f64>() < spec.loss {
            stats.lost.fetch_add(1, Relaxed);
            continue;
        }
        if a_to_b {
            if let Some(f) = spec.flip {
                if let Some(len) = tcp_payload_len(&pkt, f.dst_port) {
                    let seen = stats.flip_port_bytes.fetch_add(len as u64, Relaxed) + len as u64;
                    if !flipped && seen > f.after && len >= 512 {
                        flip_payload_byte(&mut pkt, len / 2);
                        flipped = true;
                        stats.flipped.fetch_add(1, Relaxed);
                    }
                }
            }
        }
        let now = Instant::now();
        let serialise = Duration::from_secs_f64(pkt.len() as f64 * per_byte);
        let departure = (last_departure + serialise).max(now);
        if departure - now > spec.queue {
            stats.queue_drops.fetch_add(1, Relaxed);
            continue;
        }
        last_departure = departure;
        let counter = if a_to_b {
            &stats.bytes_a_to_b
        } else {
            &stats.bytes_b_to_a
        };
        counter.fetch_add(pkt.len() as u64, Relaxed);
        if tx.send((departure + spec.delay, pkt)).is_err() {
            return;
        }
    }
}

/// How early a packet may leave: one wake-up of the egress thread delivers every packet due
/// within this much, instead of sleeping once per packet (at 200 Mbit/s packets are ~60 µs
/// apart, and a sleep and wake-up per packet cost more CPU than the copy being measured).
/// Against a 20 ms one-way delay it is a 1% error.
const EGRESS_SLACK: Duration = Duration::from_micros(200);

/// Delivers packets at their departure time.
fn egress(to: &OwnedFd, rx: mpsc::Receiver<(Instant, Vec<u8>)>, stop: &AtomicBool) {
    while !stop.load(Relaxed) {
        let Ok((due, pkt)) = rx.recv_timeout(Duration::from_millis(50)) else {
            continue;
        };
        let now = Instant::now();
        if due > now + EGRESS_SLACK {
            std::thread::sleep(due - now);
        }
        // SAFETY: writing an owned buffer; a full TUN queue drops it, like a real link.
        unsafe { libc::write(to.as_raw_fd(), pkt.as_ptr().cast(), pkt.len()) };
    }
}

/// The TCP payload length of an IPv4 packet towards `port`, if it is one.
fn tcp_payload_len(p: &[u8], port: u16) -> Option<usize> {
    if p.len() < 40 || p[0] >> 4 != 4 || p[9] != 6 {
        return None;
    }
    let ihl = ((p[0] & 0xf) as usize) * 4;
    let total = u16::from_be_bytes([p[2], p[3]]) as usize;
    let dport = u16::from_be_bytes([p[ihl + 2], p[ihl + 3]]);
    let doff = ((p[ihl + 12] >> 4) as usize) * 4;
    (dport == port && total <= p.len()).then(|| total.saturating_sub(ihl + doff))
}

/// Flips the bits of payload byte `k` and updates the TCP checksum (RFC 1624), so that the
/// segment is delivered with the corruption.
fn flip_payload_byte(p: &mut [u8], k: usize) {
    let ihl = ((p[0] & 0xf) as usize) * 4;
    let doff = ((p[ihl + 12] >> 4) as usize) * 4;
    let pos = doff + k; // offset within the TCP segment
    let word_at = ihl + (pos & !1);
    let total = u16::from_be_bytes([p[2], p[3]]) as usize;
    // The checksum pads an odd-length segment with a zero byte.
    let word = |p: &[u8]| {
        let low = if word_at + 1 < total {
            p[word_at + 1]
        } else {
            0
        };
        u16::from_be_bytes([p[word_at], low])
    };
    let old = word(p);
    p[ihl + pos] ^= 0xff;
    let new = word(p);
    let csum_at = ihl + 16;
    let hc = u16::from_be_bytes([p[csum_at], p[csum_at + 1]]);
    let mut sum = (!hc as u32) + (!old as u32) + new as u32;
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[csum_at..csum_at + 2].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ones' complement sum over the pseudo-header and segment must stay valid.
    fn tcp_checksum_ok(p: &[u8]) -> bool {
        let ihl = ((p[0] & 0xf) as usize) * 4;
        let total = u16::from_be_bytes([p[2], p[3]]) as usize;
        let seg = &p[ihl..total];
        let mut sum: u32 = 0;
        for pair in p[12..20].chunks(2) {
            sum += u16::from_be_bytes([pair[0], pair[1]]) as u32;
        }
        sum += 6 + seg.len() as u32;
        for c in seg.chunks(2) {
            sum += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum == 0xffff
    }

    fn packet(payload: &[u8]) -> Vec<u8> {
        let total = 20 + 20 + payload.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[9] = 6;
        p[12..16].copy_from_slice(&A_IP.octets());
        p[16..20].copy_from_slice(&B_IP.octets());
        p[22..24].copy_from_slice(&7400u16.to_be_bytes());
        p[32] = 5 << 4;
        p[40..].copy_from_slice(payload);
        // Compute a valid checksum from zero.
        let mut sum: u32 = 0;
        for pair in p[12..20].chunks(2) {
            sum += u16::from_be_bytes([pair[0], pair[1]]) as u32;
        }
        sum += 6 + (total - 20) as u32;
        for c in p[20..].chunks(2) {
            sum += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        p[36..38].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        p
    }

    #[test]
    fn flipping_keeps_the_tcp_checksum_valid() {
        for (len, k) in [(1000usize, 500usize), (1001, 333), (600, 0), (601, 600)] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut p = packet(&payload);
            assert!(tcp_checksum_ok(&p));
            assert_eq!(tcp_payload_len(&p, 7400), Some(len));
            assert_eq!(tcp_payload_len(&p, 7401), None);
            flip_payload_byte(&mut p, k);
            assert_eq!(p[40 + k], payload[k] ^ 0xff);
            assert!(tcp_checksum_ok(&p), "len {len} k {k}");
        }
    }
}
