//! What the gate allows: the refused address ranges, the ports and schemes, the person's
//! allowances and a job's narrowing, all judged on one resolved `SocketAddr`.
//!
//! Addresses reach this module already normalised: URL hosts by the `url` crate (WHATWG host
//! parsing turns `2130706433`, `0177.0.0.1`, `0x7f.1` and `127.1` into `127.0.0.1`), the
//! person's allowances through the same parser ([`Allowance::parse`]), and IPv6 forms that
//! embed an IPv4 address (mapped, compatible, NAT64, 6to4) are judged as that address.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The ports a destination may use unless the person allowed another for it.
pub const DEFAULT_PORTS: [u16; 2] = [80, 443];

/// Why a destination was refused, named for the log and the job error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// `ADDRESS:PORT` (or the URL's scheme when that is what was refused).
    pub destination: String,
    pub rule: String,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is refused by the egress gate: {}", self.destination, self.rule)
    }
}

/// The address ranges refused by default, each with the name a refusal reports.
fn refused_v4() -> &'static [(Ipv4Net, &'static str)] {
    use std::sync::OnceLock;
    static RULES: OnceLock<Vec<(Ipv4Net, &'static str)>> = OnceLock::new();
    RULES.get_or_init(|| {
        [
            ("0.0.0.0/8", "this-network range 0.0.0.0/8"),
            ("10.0.0.0/8", "RFC 1918 private network 10.0.0.0/8"),
            ("100.64.0.0/10", "carrier-grade NAT range 100.64.0.0/10"),
            ("127.0.0.0/8", "loopback 127.0.0.0/8"),
            ("169.254.0.0/16", "link-local 169.254.0.0/16 (cloud metadata included)"),
            ("172.16.0.0/12", "RFC 1918 private network 172.16.0.0/12"),
            ("192.168.0.0/16", "RFC 1918 private network 192.168.0.0/16"),
            ("224.0.0.0/4", "multicast 224.0.0.0/4"),
            ("255.255.255.255/32", "broadcast 255.255.255.255"),
        ]
        .into_iter()
        .map(|(net, name)| (net.parse().expect("a valid IPv4 range"), name))
        .collect()
    })
}

fn refused_v6() -> &'static [(Ipv6Net, &'static str)] {
    use std::sync::OnceLock;
    static RULES: OnceLock<Vec<(Ipv6Net, &'static str)>> = OnceLock::new();
    RULES.get_or_init(|| {
        [
            ("::1/128", "IPv6 loopback ::1"),
            ("::/128", "unspecified address ::"),
            ("fc00::/7", "IPv6 unique local fc00::/7"),
            ("fe80::/10", "IPv6 link-local fe80::/10"),
            ("ff00::/8", "IPv6 multicast ff00::/8"),
        ]
        .into_iter()
        .map(|(net, name)| (net.parse().expect("a valid IPv6 range"), name))
        .collect()
    })
}

/// The IPv4 address an IPv6 address stands for, when it embeds one, with the form's name.
fn embedded_v4(ip: Ipv6Addr) -> Option<(Ipv4Addr, &'static str)> {
    let s = ip.segments();
    let o = ip.octets();
    let tail = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some((v4, "IPv4-mapped"));
    }
    // `::a.b.c.d` (deprecated IPv4-compatible); `::` and `::1` are IPv6's own.
    if s[..6] == [0; 6] && ip != Ipv6Addr::UNSPECIFIED && ip != Ipv6Addr::LOCALHOST {
        return Some((tail, "IPv4-compatible"));
    }
    // NAT64 well-known prefix 64:ff9b::/96: a NAT64 gateway on the LAN forwards to it.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some((tail, "NAT64"));
    }
    // 6to4 2002:AABB:CCDD::/48 carries AA.BB.CC.DD.
    if s[0] == 0x2002 {
        return Some((Ipv4Addr::new(o[2], o[3], o[4], o[5]), "6to4"));
    }
    None
}

/// The address an allowance or a refusal is judged on: an IPv6 form of an IPv4 address is
/// that IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => embedded_v4(v6).map_or(ip, |(v4, _)| IpAddr::V4(v4)),
        v4 => v4,
    }
}

/// The default rule that refuses `ip`, if one does.
pub fn refusal(ip: IpAddr) -> Option<String> {
    match ip {
        IpAddr::V4(v4) => refused_v4().iter().find(|(net, _)| net.contains(&v4)).map(|(_, name)| (*name).to_owned()),
        IpAddr::V6(v6) => {
            if let Some((v4, form)) = embedded_v4(v6) {
                return refusal(IpAddr::V4(v4)).map(|rule| format!("{form} form of {v4}: {rule}"));
            }
            refused_v6().iter().find(|(net, _)| net.contains(&v6)).map(|(_, name)| (*name).to_owned())
        }
    }
}

/// One destination the person allowed (or a job narrowed to): an address or range, and a
/// port or, without one, the default ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowance {
    pub net: IpNet,
    pub port: Option<u16>,
}

impl fmt::Display for Allowance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addr = if self.net.prefix_len() == self.net.max_prefix_len() {
            match self.net.addr() {
                IpAddr::V6(v6) => format!("[{v6}]"),
                v4 => v4.to_string(),
            }
        } else {
            match self.net {
                IpNet::V6(n) => format!("[{n}]"),
                n => n.to_string(),
            }
        };
        match self.port {
            Some(port) => write!(f, "{addr}:{port}"),
            None => f.write_str(&addr),
        }
    }
}

impl Allowance {
    /// `ADDRESS[:PORT]`, `ADDRESS/PREFIX[:PORT]`, `[IPv6][:PORT]`, `[IPv6/PREFIX][:PORT]` or a
    /// bare IPv6 address. Any IPv4 spelling a URL accepts (`127.1`, `0x7f.0.0.1`) is taken
    /// and normalised the same way. Names are refused: the gate judges addresses, and a name
    /// can resolve elsewhere tomorrow.
    pub fn parse(text: &str) -> Result<Allowance, String> {
        let text = text.trim();
        let bad = |why: &str| {
            format!(
                "egress allowance {text:?} is not usable: {why}; write ADDRESS[:PORT] or ADDRESS/PREFIX[:PORT], \
                 for example 127.0.0.1:8080, [::1]:8080 or 192.168.1.0/24"
            )
        };
        let (address, port) = if let Some(rest) = text.strip_prefix('[') {
            let (inside, after) = rest.split_once(']').ok_or_else(|| bad("a '[' without its ']'"))?;
            let port = match after {
                "" => None,
                after => Some(after.strip_prefix(':').ok_or_else(|| bad("text after ']' that is not :PORT"))?),
            };
            (inside, port)
        } else if text.matches(':').count() == 1 {
            let (address, port) = text.split_once(':').expect("one colon");
            (address, Some(port))
        } else {
            (text, None)
        };
        let port = match port {
            None => None,
            Some(port) => Some(
                port.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| bad(&format!("port {port:?} is not a number from 1 to 65535")))?,
            ),
        };
        let (host, prefix) = match address.split_once('/') {
            Some((host, prefix)) => {
                (host, Some(prefix.parse::<u8>().map_err(|_| bad(&format!("prefix {prefix:?} is not a number")))?))
            }
            None => (address, None),
        };
        let ip: IpAddr = if host.contains(':') {
            IpAddr::V6(host.parse().map_err(|_| bad(&format!("{host:?} is not an IPv6 address")))?)
        } else {
            match url::Host::parse(host) {
                Ok(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
                Ok(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
                _ if host.eq_ignore_ascii_case("localhost") => {
                    return Err(bad("\"localhost\" is a name; allow 127.0.0.1 or [::1] instead"))
                }
                _ => {
                    return Err(bad(&format!("{host:?} is a name, not an IP address; allow the address it serves on")))
                }
            }
        };
        let ip = canonical(ip);
        let net = match prefix {
            None => IpNet::from(ip),
            Some(prefix) => {
                IpNet::new(ip, prefix).map_err(|_| bad(&format!("prefix /{prefix} is too long for {ip}")))?.trunc()
            }
        };
        Ok(Allowance { net, port })
    }

    pub fn covers(&self, ip: IpAddr, port: u16) -> bool {
        self.net.contains(&canonical(ip)) && self.port.map_or(DEFAULT_PORTS.contains(&port), |p| p == port)
    }
}

/// The policy of one agent: defaults plus what the person allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    allowances: Vec<Allowance>,
}

impl Policy {
    pub fn new(allowances: Vec<Allowance>) -> Policy {
        Policy { allowances }
    }

    /// Parses every allowance; the first bad one is the error.
    pub fn parse<'a>(texts: impl IntoIterator<Item = &'a str>) -> Result<Policy, String> {
        Ok(Policy::new(texts.into_iter().map(Allowance::parse).collect::<Result<_, _>>()?))
    }

    pub fn allowances(&self) -> &[Allowance] {
        &self.allowances
    }

    /// Judges one resolved destination. `narrowing` is a job's own list (the hub's): the
    /// destination must match it as well.
    pub fn judge(&self, destination: SocketAddr, narrowing: Option<&[Allowance]>) -> Result<(), Denied> {
        let (ip, port) = (destination.ip(), destination.port());
        let denied = |rule: String| Denied { destination: display(destination), rule };
        if !self.allowances.iter().any(|a| a.covers(ip, port)) {
            if let Some(rule) = refusal(ip) {
                return Err(denied(format!(
                    "{rule}; the person at this agent can allow it with `edge-agent run --allow-egress {}` \
                     or allowEgress in settings.json",
                    display(destination)
                )));
            }
            if !DEFAULT_PORTS.contains(&port) {
                return Err(denied(format!(
                    "port {port} is not 80 or 443; the person at this agent can allow it with \
                     `edge-agent run --allow-egress {}`",
                    display(destination)
                )));
            }
        }
        if let Some(list) = narrowing {
            if !list.iter().any(|a| a.covers(ip, port)) {
                return Err(denied("not in the job's egress list (the hub narrowed this job)".to_owned()));
            }
        }
        Ok(())
    }
}

/// Whether a URL scheme may pass: http and https, and ws/wss for the browser.
pub fn judge_scheme(scheme: &str, websockets: bool) -> Result<(), Denied> {
    match scheme {
        "http" | "https" => Ok(()),
        "ws" | "wss" if websockets => Ok(()),
        other => Err(Denied {
            destination: format!("{other}:"),
            rule: format!("scheme {other:?} is not http or https{}", if websockets { " (or ws, wss)" } else { "" }),
        }),
    }
}

/// `1.2.3.4:80`, `[::1]:80`.
pub fn display(destination: SocketAddr) -> String {
    destination.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url_host(spelling: &str) -> IpAddr {
        let url = url::Url::parse(&format!("http://{spelling}/")).unwrap();
        match url.host().unwrap() {
            url::Host::Ipv4(v4) => IpAddr::V4(v4),
            url::Host::Ipv6(v6) => IpAddr::V6(v6),
            url::Host::Domain(d) => panic!("{spelling} stayed a name: {d}"),
        }
    }

    fn judged(spelling: &str, port: u16) -> Result<(), Denied> {
        Policy::default().judge(SocketAddr::new(url_host(spelling), port), None)
    }

    #[test]
    fn every_spelling_of_loopback_is_refused_as_loopback() {
        for spelling in [
            "127.0.0.1",
            "2130706433",
            "0177.0.0.1",
            "0x7f.1",
            "0x7f000001",
            "127.1",
            "127.0.1",
            "017700000001",
            "[::ffff:127.0.0.1]",
            "[::ffff:7f00:1]",
            "[::127.0.0.1]",
            "[64:ff9b::7f00:1]",
            "[2002:7f00:1::]",
        ] {
            let denied = judged(spelling, 80).unwrap_err();
            assert!(denied.rule.contains("loopback 127.0.0.0/8"), "{spelling}: {denied}");
            assert!(denied.destination.contains("127.0.0.1") || denied.destination.contains(':'), "{spelling}");
        }
        assert!(judged("[::1]", 443).unwrap_err().rule.contains("IPv6 loopback"));
    }

    #[test]
    fn every_default_range_is_refused_and_named() {
        for (spelling, rule) in [
            ("0.0.0.0", "0.0.0.0/8"),
            ("0.1.2.3", "0.0.0.0/8"),
            ("10.0.0.1", "10.0.0.0/8"),
            ("012.0.0.1", "10.0.0.0/8"),
            ("172.16.0.1", "172.16.0.0/12"),
            ("172.31.255.255", "172.16.0.0/12"),
            ("192.168.1.1", "192.168.0.0/16"),
            ("0xc0a80101", "192.168.0.0/16"),
            ("100.64.0.1", "100.64.0.0/10"),
            ("100.127.255.254", "100.64.0.0/10"),
            ("169.254.169.254", "cloud metadata"),
            ("2852039166", "cloud metadata"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("[::]", "unspecified"),
            ("[fc00::1]", "unique local"),
            ("[fd12:3456::1]", "unique local"),
            ("[fe80::1]", "link-local fe80"),
            ("[ff02::1]", "IPv6 multicast"),
            ("[::ffff:10.0.0.1]", "IPv4-mapped form of 10.0.0.1"),
            ("[::ffff:169.254.169.254]", "cloud metadata"),
            ("[::192.168.0.1]", "IPv4-compatible form of 192.168.0.1"),
            ("[64:ff9b::a00:1]", "NAT64 form of 10.0.0.1"),
        ] {
            let denied = judged(spelling, 443).unwrap_err();
            assert!(denied.rule.contains(rule), "{spelling}: {denied}");
            assert!(denied.rule.contains("--allow-egress"), "a refusal says how to allow: {denied}");
        }
    }

    #[test]
    fn public_addresses_pass_on_80_and_443_only() {
        for spelling in ["93.184.215.14", "1.1.1.1", "172.32.0.1", "100.128.0.1", "198.18.0.1", "[2606:4700::1111]"] {
            judged(spelling, 80).unwrap_or_else(|d| panic!("{spelling}: {d}"));
            judged(spelling, 443).unwrap_or_else(|d| panic!("{spelling}: {d}"));
            let denied = judged(spelling, 8080).unwrap_err();
            assert!(denied.rule.contains("port 8080 is not 80 or 443"), "{denied}");
        }
    }

    #[test]
    fn an_allowance_opens_exactly_its_address_and_port() {
        let policy = Policy::parse(["127.0.0.1:8080", "10.1.2.0/24", "[::1]:9000"]).unwrap();
        let at = |s: &str, port| policy.judge(SocketAddr::new(url_host(s), port), None);
        at("127.0.0.1", 8080).unwrap();
        at("2130706433", 8080).unwrap();
        at("[::ffff:127.0.0.1]", 8080).unwrap();
        assert!(at("127.0.0.1", 8081).is_err());
        assert!(at("127.0.0.1", 80).is_err(), "a port-specific allowance does not open 80");
        assert!(at("127.0.0.2", 8080).is_err());
        at("10.1.2.200", 443).unwrap();
        assert!(at("10.1.2.200", 22).is_err(), "a range without a port opens the default ports only");
        assert!(at("10.1.3.1", 443).is_err());
        at("[::1]", 9000).unwrap();
    }

    #[test]
    fn allowances_normalise_every_spelling_and_refuse_names() {
        for (text, shown) in [
            ("127.0.0.1:8080", "127.0.0.1:8080"),
            ("2130706433:8080", "127.0.0.1:8080"),
            ("0x7f.1:8080", "127.0.0.1:8080"),
            ("0177.0.0.1", "127.0.0.1"),
            ("[::1]:8080", "[::1]:8080"),
            ("::1", "[::1]"),
            ("[::ffff:127.0.0.1]:80", "127.0.0.1:80"),
            ("192.168.1.77/24", "192.168.1.0/24"),
            ("192.168.1.0/24:8443", "192.168.1.0/24:8443"),
            ("[fd00::/8]:80", "[fd00::/8]:80"),
        ] {
            assert_eq!(Allowance::parse(text).unwrap().to_string(), shown, "{text}");
        }
        for (text, needle) in [
            ("localhost:8080", "allow 127.0.0.1"),
            ("example.com", "is a name"),
            ("127.0.0.1:0", "port \"0\""),
            ("127.0.0.1:http", "port \"http\""),
            ("10.0.0.0/40", "prefix /40"),
            ("[::1", "without its ']'"),
            ("", "is a name"),
        ] {
            let error = Allowance::parse(text).unwrap_err();
            assert!(error.contains(needle) && error.contains("for example"), "{text}: {error}");
        }
    }

    #[test]
    fn a_jobs_narrowing_only_narrows() {
        let person = Policy::parse(["127.0.0.1:8080"]).unwrap();
        let narrowing = vec![Allowance::parse("93.184.215.14").unwrap(), Allowance::parse("10.0.0.1").unwrap()];
        let at = |ip: &str, port| person.judge(SocketAddr::new(ip.parse().unwrap(), port), Some(&narrowing));
        at("93.184.215.14", 443).unwrap();
        let other = at("1.1.1.1", 443).unwrap_err();
        assert!(other.rule.contains("job's egress list"), "{other}");
        assert!(at("10.0.0.1", 80).unwrap_err().rule.contains("RFC 1918"), "the list cannot widen");
        assert!(at("127.0.0.1", 8080).unwrap_err().rule.contains("job's egress list"));
    }

    #[test]
    fn schemes() {
        judge_scheme("http", false).unwrap();
        judge_scheme("https", false).unwrap();
        assert!(judge_scheme("ws", false).is_err());
        judge_scheme("wss", true).unwrap();
        for scheme in ["file", "ftp", "gopher", "data"] {
            assert!(judge_scheme(scheme, true).unwrap_err().rule.contains("not http or https"));
        }
    }
}
