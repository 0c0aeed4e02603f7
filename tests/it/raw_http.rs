//! The receiving side of HTTP/1.1 at the level of bytes, for receivers that
//! misbehave in ways a well-kept HTTP server will not (`hostile`, `chaos`).

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// What a test needs of a request it read.
pub struct RawRequest {
    pub path: String,
    pub webhook_id: Option<String>,
}

/// Reads one request, its head and its body (by `content-length`); `None`
/// when the connection ends first or the head is not HTTP.
pub async fn read_request(stream: &mut TcpStream) -> Option<RawRequest> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&seen[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let path = lines.next()?.split(' ').nth(1)?.to_owned();
    let mut webhook_id = None;
    let mut length = 0;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "webhook-id" => webhook_id = Some(value.trim().to_owned()),
                "content-length" => length = value.trim().parse().ok()?,
                _ => {}
            }
        }
    }
    while seen.len() < head_end + length {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    Some(RawRequest { path, webhook_id })
}

/// Closes the connection with a RST instead of a FIN.
pub fn reset(stream: TcpStream) {
    // SO_LINGER 0. (Deprecated because a non-zero linger blocks the thread
    // on drop; zero never does.)
    #[allow(deprecated)]
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}
