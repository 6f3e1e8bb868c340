//! Whether the public listeners accept connections yet, for `/readyz`.
//!
//! Pingora reports its listening service started before the sockets are
//! bound, and the admin listener can come up first: without this check a
//! BGP health check could announce the PoP while connections to it are
//! still refused. Linux lists listening sockets in `/proc/net/tcp{,6}`;
//! reading them (once, until every listener shows up) answers without
//! connecting to ourselves, which on a TLS listener would log a failed
//! handshake.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The first of `wanted` not yet listening, if any.
pub fn first_not_listening(wanted: &[SocketAddr]) -> Option<SocketAddr> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    let mut listening = Vec::new();
    let mut readable = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            readable = true;
            listening.extend(text.lines().skip(1).filter_map(parse_listen_line));
        }
    }
    if !readable {
        // No /proc (a restricted sandbox): cannot tell, so do not hold
        // readiness back on it.
        return None;
    }
    wanted
        .iter()
        .find(|w| !listening.iter().any(|l| same(l, w)))
        .copied()
}

fn same(a: &SocketAddr, b: &SocketAddr) -> bool {
    a.ip() == b.ip() && a.port() == b.port()
}

/// `sl local_address rem_address st ...`: the local address of a socket in
/// state `0A` (LISTEN). Addresses are hex: each 32-bit word as the kernel's
/// native-endian integer, the port big-endian.
fn parse_listen_line(line: &str) -> Option<SocketAddr> {
    let mut fields = line.split_whitespace();
    let local = fields.nth(1)?;
    let state = fields.nth(1)?;
    if state != "0A" {
        return None;
    }
    let (ip, port) = local.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_ne_bytes(),
        )
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listening_sockets_only() {
        let v4 = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0";
        let est = "   1: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1";
        let v6 = "   0: 00000000000000000000000001000000:01BB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0";
        if cfg!(target_endian = "little") {
            assert_eq!(
                parse_listen_line(v4),
                Some("127.0.0.1:8080".parse().unwrap())
            );
            assert_eq!(parse_listen_line(v6), Some("[::1]:443".parse().unwrap()));
        }
        assert_eq!(parse_listen_line(est), None);
        assert_eq!(parse_listen_line("garbage"), None);
    }

    #[test]
    fn finds_a_real_listener_and_misses_a_closed_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = l.local_addr().unwrap();
        assert_eq!(first_not_listening(&[open]), None);
        let closed = {
            let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            t.local_addr().unwrap()
        };
        if cfg!(target_os = "linux") {
            assert_eq!(first_not_listening(&[open, closed]), Some(closed));
        }
    }
}
