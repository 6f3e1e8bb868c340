//! What the client sees for every failure: one exhaustive mapping.
//!
//! Pingora's errors record whose fault it was (upstream, downstream,
//! internal); edgegate adds its own refusals (requests it will not forward).
//! Both are mapped here and nowhere else.

use pingora::{Error, ErrorSource, ErrorType};

/// A request edgegate refuses to forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No route for this host and path.
    NoRoute,
    /// Ambiguous or invalid message framing (possible request smuggling).
    BadFraming,
    /// Malformed in another way (no Host, dot-segments in the path...).
    BadRequest,
    /// Request line plus headers over the route's limit.
    HeadersTooLarge,
    /// Body over the route's limit.
    BodyTooLarge,
    /// A fail-closed filter failed (trap, timeout, memory cap, bad answer).
    FilterFailed,
    /// The origin's response is larger than the route's body filters take.
    TransformTooLarge,
}

impl Refusal {
    /// Status and short body.
    pub fn response(self) -> (u16, &'static str) {
        match self {
            Refusal::NoRoute => (404, "no route for this host and path\n"),
            Refusal::BadFraming => (400, "bad request: ambiguous message framing\n"),
            Refusal::BadRequest => (400, "bad request\n"),
            Refusal::HeadersTooLarge => (431, "request header fields too large\n"),
            Refusal::BodyTooLarge => (413, "request body too large\n"),
            Refusal::FilterFailed => (503, "service unavailable: a filter failed\n"),
            Refusal::TransformTooLarge => {
                (413, "the origin's response is too large to transform\n")
            }
        }
    }

    /// Whether the connection must close after the answer: when framing is
    /// in doubt, or the body was not read, the next bytes cannot be trusted.
    pub fn closes_connection(self) -> bool {
        match self {
            Refusal::BadFraming | Refusal::BodyTooLarge | Refusal::HeadersTooLarge => true,
            Refusal::NoRoute
            | Refusal::BadRequest
            | Refusal::FilterFailed
            | Refusal::TransformTooLarge => false,
        }
    }
}

/// Status and short body for an error that ended a request; status 0 means
/// the client is gone and nothing should be written.
pub fn client_status(e: &Error, refusal: Option<Refusal>) -> (u16, &'static str) {
    if let Some(r) = refusal {
        return r.response();
    }
    const BAD_GATEWAY: (u16, &str) = (502, "bad gateway: the upstream failed\n");
    const TIMEOUT: (u16, &str) = (
        504,
        "gateway timeout: the upstream did not answer in time\n",
    );
    const INTERNAL: (u16, &str) = (500, "internal error\n");
    let downstream = matches!(e.esource(), ErrorSource::Downstream);
    match e.etype() {
        ErrorType::HTTPStatus(413) => (413, "request body too large\n"),
        ErrorType::HTTPStatus(431) => (431, "request header fields too large\n"),
        ErrorType::HTTPStatus(code) if (400..500).contains(code) => (*code, "bad request\n"),
        ErrorType::HTTPStatus(code) if (500..600).contains(code) => (*code, "upstream error\n"),
        ErrorType::HTTPStatus(_) => INTERNAL,
        ErrorType::ConnectTimedout | ErrorType::TLSHandshakeTimedout => TIMEOUT,
        ErrorType::ReadTimedout | ErrorType::WriteTimedout if downstream => {
            (408, "request timeout\n")
        }
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => TIMEOUT,
        ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed
            if downstream =>
        {
            (0, "")
        }
        ErrorType::InvalidHTTPHeader
        | ErrorType::H1Error
        | ErrorType::H2Error
        | ErrorType::InvalidH2
            if downstream =>
        {
            (400, "bad request\n")
        }
        ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::TLSWantX509Lookup
        | ErrorType::TLSHandshakeFailure
        | ErrorType::InvalidCert
        | ErrorType::HandshakeError
        | ErrorType::ConnectError
        | ErrorType::SocketError
        | ErrorType::ConnectProxyFailure
        | ErrorType::InvalidHTTPHeader
        | ErrorType::H1Error
        | ErrorType::H2Error
        | ErrorType::H2Downgrade
        | ErrorType::InvalidH2
        | ErrorType::ReadError
        | ErrorType::WriteError
        | ErrorType::ConnectionClosed => BAD_GATEWAY,
        ErrorType::BindError
        | ErrorType::AcceptError
        | ErrorType::FileOpenError
        | ErrorType::FileCreateError
        | ErrorType::FileReadError
        | ErrorType::FileWriteError
        | ErrorType::InternalError
        | ErrorType::UnknownError
        | ErrorType::Custom(_)
        | ErrorType::CustomCode(_, _) => {
            if matches!(e.esource(), ErrorSource::Upstream) {
                BAD_GATEWAY
            } else {
                INTERNAL
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_failures_are_502_or_504() {
        let refused = Error::new_up(ErrorType::ConnectRefused);
        assert_eq!(client_status(&refused, None).0, 502);
        let timeout = Error::new_up(ErrorType::ReadTimedout);
        assert_eq!(client_status(&timeout, None).0, 504);
        let connect_timeout = Error::new_up(ErrorType::ConnectTimedout);
        assert_eq!(client_status(&connect_timeout, None).0, 504);
    }

    #[test]
    fn refusals_win_and_gone_clients_get_nothing() {
        let e = Error::new_down(ErrorType::ReadError);
        assert_eq!(client_status(&e, None).0, 0);
        assert_eq!(client_status(&e, Some(Refusal::BodyTooLarge)).0, 413);
        let bad = Error::new_down(ErrorType::InvalidHTTPHeader);
        assert_eq!(client_status(&bad, None).0, 400);
    }
}
