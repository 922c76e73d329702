//! Users' request signatures: the header RocketMQ 5's official clients send, made and checked.
//!
//! Every request of a client with credentials carries two headers:
//!
//! ```text
//! x-mq-date-time: 20261207T203000Z                       (UTC, to the second)
//! authorization:  MQv2-HMAC-SHA1 Credential=<access key>, SignedHeaders=x-mq-date-time,
//!                 Signature=<hex of HMAC-SHA1(secret key, the x-mq-date-time value)>
//! ```
//!
//! This is upstream's format (the official Java, Python, Go and Node clients all send it), so
//! that applications connect unchanged; the Rust client and cluster-cli sign the same way. What
//! it proves: the caller holds the secret key of the access key, now. What it does not: the
//! signature covers the time only, so a request captured on the wire could be sent again within
//! the clock-skew window ([`DATE_SKEW_SECS_MAX`]); TLS is what keeps it from being captured.
//! Outside the window it is refused, so an old capture is worthless.

use std::fmt;
use std::path::Path;

use hmac::{Hmac, Mac};
use sha1::Sha1;

use crate::client::unix_now_ms;

/// gRPC metadata keys of a user's signature.
pub const AUTHORIZATION_METADATA_KEY: &str = "authorization";
pub const DATE_TIME_METADATA_KEY: &str = "x-mq-date-time";
/// The scheme and signed header upstream's clients name.
const SCHEME: &str = "MQv2-HMAC-SHA1";
const SIGNED_HEADERS: &str = "x-mq-date-time";
/// How far a request's `x-mq-date-time` may be from the receiver's clock, either way.
pub const DATE_SKEW_SECS_MAX: u64 = 300;
/// Environment variables the Rust client and cluster-cli read credentials from.
pub const ACCESS_KEY_ENV: &str = "CLUSTER_ACCESS_KEY";
pub const SECRET_KEY_ENV: &str = "CLUSTER_SECRET_KEY";
/// Largest credentials file read.
const CREDENTIALS_FILE_BYTES_MAX: u64 = 64 << 10;

type HmacSha1 = Hmac<Sha1>;

/// An access key and its secret key. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key: String,
    secret_key: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key", &self.access_key)
            .finish_non_exhaustive()
    }
}

/// Credentials that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error(transparent)]
    Bad(#[from] crate::acl::AclError),
    #[error("{ACCESS_KEY_ENV} and {SECRET_KEY_ENV} must be set together")]
    HalfSet,
    #[error("credentials file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("credentials file {path}: {reason}")]
    File { path: String, reason: String },
}

impl Credentials {
    pub fn new(access_key: &str, secret_key: &str) -> Result<Credentials, CredentialsError> {
        crate::acl::check_user_name(access_key)?;
        crate::acl::check_secret_key(secret_key)?;
        Ok(Credentials {
            access_key: access_key.to_owned(),
            secret_key: secret_key.to_owned(),
        })
    }

    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// From [`ACCESS_KEY_ENV`] and [`SECRET_KEY_ENV`]; `None` when neither is set.
    pub fn from_env() -> Result<Option<Credentials>, CredentialsError> {
        let get = |name| std::env::var(name).ok().filter(|value| !value.is_empty());
        match (get(ACCESS_KEY_ENV), get(SECRET_KEY_ENV)) {
            (None, None) => Ok(None),
            (Some(access), Some(secret)) => Credentials::new(&access, &secret).map(Some),
            _ => Err(CredentialsError::HalfSet),
        }
    }

    /// From a file of two lines, `access_key=...` and `secret_key=...` (blank lines and `#`
    /// comments ignored), such as `cluster-cli user create` writes.
    pub fn from_file(path: &Path) -> Result<Credentials, CredentialsError> {
        use std::io::Read;
        let shown = path.display().to_string();
        let read_error = |source| CredentialsError::Read {
            path: shown.clone(),
            source,
        };
        let mut text = String::new();
        std::fs::File::open(path)
            .map_err(read_error)?
            .take(CREDENTIALS_FILE_BYTES_MAX)
            .read_to_string(&mut text)
            .map_err(read_error)?;
        let bad = |reason: &str| CredentialsError::File {
            path: shown.clone(),
            reason: reason.to_owned(),
        };
        let (mut access, mut secret) = (None, None);
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, value) = line
                .split_once('=')
                .ok_or_else(|| bad("a line is not name=value"))?;
            let slot = match name.trim() {
                "access_key" => &mut access,
                "secret_key" => &mut secret,
                _ => return Err(bad("names are access_key and secret_key")),
            };
            if slot.replace(value.trim().to_owned()).is_some() {
                return Err(bad("a name is given twice"));
            }
        }
        match (access, secret) {
            (Some(access), Some(secret)) => Credentials::new(&access, &secret),
            _ => Err(bad("access_key and secret_key are both needed")),
        }
    }

    /// The two header values for a request made at `unix_secs`.
    pub fn sign(&self, unix_secs: u64) -> SignedHeaders {
        let date_time = format_date_time(unix_secs);
        let signature = signature_hex(&self.secret_key, &date_time);
        SignedHeaders {
            authorization: format!(
                "{SCHEME} Credential={}, SignedHeaders={SIGNED_HEADERS}, Signature={signature}",
                self.access_key
            ),
            date_time,
        }
    }

    /// [`Credentials::sign`] for now.
    pub fn sign_now(&self) -> SignedHeaders {
        self.sign(unix_now_ms() / 1000)
    }
}

/// What a signed request carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedHeaders {
    pub authorization: String,
    pub date_time: String,
}

impl SignedHeaders {
    /// Puts both into request headers (replacing any there).
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for (name, value) in [
            (AUTHORIZATION_METADATA_KEY, &self.authorization),
            (DATE_TIME_METADATA_KEY, &self.date_time),
        ] {
            if let Ok(value) = http::HeaderValue::from_str(value) {
                headers.insert(name, value);
            }
        }
    }
}

/// A parsed `authorization` header. `access_key` is empty when the client has no credentials
/// (upstream's clients send the header even then).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorization {
    pub access_key: String,
    pub signature: [u8; 20],
}

/// Why a user's signature was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureError {
    Malformed,
    /// `x-mq-date-time` missing, malformed, or outside the skew window.
    Stale,
    BadSignature,
}

impl Authorization {
    /// Parses `MQv2-HMAC-SHA1 Credential=AK, SignedHeaders=x-mq-date-time, Signature=HEX`
    /// (spaces after the commas optional). `Ok(None)`: the header names no access key.
    pub fn parse(header: &str) -> Result<Option<Authorization>, SignatureError> {
        let rest = header
            .strip_prefix(SCHEME)
            .and_then(|rest| rest.strip_prefix(' '))
            .ok_or(SignatureError::Malformed)?;
        let (mut credential, mut signed, mut signature) = (None, None, None);
        for part in rest.split(',').map(str::trim) {
            let (name, value) = part.split_once('=').ok_or(SignatureError::Malformed)?;
            let slot = match name {
                "Credential" => &mut credential,
                "SignedHeaders" => &mut signed,
                "Signature" => &mut signature,
                _ => return Err(SignatureError::Malformed),
            };
            if slot.replace(value).is_some() {
                return Err(SignatureError::Malformed);
            }
        }
        let (Some(credential), Some(signed), Some(signature)) = (credential, signed, signature)
        else {
            return Err(SignatureError::Malformed);
        };
        if !signed.eq_ignore_ascii_case(SIGNED_HEADERS) {
            return Err(SignatureError::Malformed);
        }
        if credential.is_empty() {
            return Ok(None);
        }
        crate::acl::check_user_name(credential).map_err(|_| SignatureError::Malformed)?;
        let signature = unhex20(signature).ok_or(SignatureError::Malformed)?;
        Ok(Some(Authorization {
            access_key: credential.to_owned(),
            signature,
        }))
    }

    /// Whether the signature is `secret_key`'s over `date_time`, and `date_time` is within
    /// [`DATE_SKEW_SECS_MAX`] of `now_secs`.
    pub fn verify(
        &self,
        secret_key: &str,
        date_time: &str,
        now_secs: u64,
    ) -> Result<(), SignatureError> {
        let signed_at = parse_date_time(date_time).ok_or(SignatureError::Stale)?;
        if signed_at.abs_diff(now_secs) > DATE_SKEW_SECS_MAX {
            return Err(SignatureError::Stale);
        }
        let mut mac = HmacSha1::new_from_slice(secret_key.as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(date_time.as_bytes());
        mac.verify_slice(&self.signature)
            .map_err(|_| SignatureError::BadSignature)
    }
}

fn signature_hex(secret_key: &str, date_time: &str) -> String {
    let mut mac =
        HmacSha1::new_from_slice(secret_key.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(date_time.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn unhex20(text: &str) -> Option<[u8; 20]> {
    if text.len() != 40 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut bytes = [0u8; 20];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(bytes)
}

/// `yyyyMMddTHHmmssZ` in UTC.
pub fn format_date_time(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let secs = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The seconds since the Unix epoch `text` (`yyyyMMddTHHmmssZ`) names; `None` if it is not
/// exactly that, or not a real date.
pub fn parse_date_time(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    if bytes.len() != 16 || bytes[8] != b'T' || bytes[15] != b'Z' {
        return None;
    }
    let digits = |range: std::ops::Range<usize>| -> Option<u64> {
        let part = text.get(range)?;
        part.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (year, month, day) = (digits(0..4)?, digits(4..6)?, digits(6..8)?);
    let (hour, minute, second) = (digits(9..11)?, digits(11..13)?, digits(13..15)?);
    if !(1970..=9999).contains(&year)
        || !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let days = days_from_civil(year as i64, month as u32, day as u32);
    // A day that does not exist (February 30th) comes back as another date: refuse it.
    if civil_from_days(days) != (year as i64, month as u32, day as u32) {
        return None;
    }
    Some(days as u64 * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Howard Hinnant's `days_from_civil`: days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_format_and_parse_as_upstream_writes_them() {
        // 2026-12-07T20:30:00Z, checked with `date -u -d @1796675400`.
        assert_eq!(format_date_time(1_796_675_400), "20261207T203000Z");
        assert_eq!(parse_date_time("20261207T203000Z"), Some(1_796_675_400));
        assert_eq!(format_date_time(0), "19700101T000000Z");
        assert_eq!(parse_date_time("20240229T235959Z"), Some(1_709_251_199));
        for secs in [
            0,
            951_782_400,
            1_709_251_199,
            4_102_444_800,
            253_402_300_799,
        ] {
            assert_eq!(parse_date_time(&format_date_time(secs)), Some(secs));
        }
        for bad in [
            "",
            "20261207T203000",
            "20261207 203000Z",
            "20261307T203000Z",
            "20230229T000000Z",
            "20261207T246000Z",
            "20261207T203060Z",
            "+0261207T203000Z",
            "20261207T203000Zx",
        ] {
            assert_eq!(parse_date_time(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_signature_verifies_with_its_secret_within_the_window_only() {
        let credentials = Credentials::new("app", "secret-key-1").unwrap();
        let now = 1_796_675_400;
        let signed = credentials.sign(now);
        let parsed = Authorization::parse(&signed.authorization)
            .unwrap()
            .unwrap();
        assert_eq!(parsed.access_key, "app");
        assert_eq!(
            parsed.verify("secret-key-1", &signed.date_time, now),
            Ok(())
        );
        assert_eq!(
            parsed.verify("secret-key-1", &signed.date_time, now + DATE_SKEW_SECS_MAX),
            Ok(())
        );
        assert_eq!(
            parsed.verify("secret-key-2", &signed.date_time, now),
            Err(SignatureError::BadSignature)
        );
        assert_eq!(
            parsed.verify(
                "secret-key-1",
                &signed.date_time,
                now + DATE_SKEW_SECS_MAX + 1
            ),
            Err(SignatureError::Stale),
            "a replay after the window"
        );
        let other_time = format_date_time(now + 1);
        assert_eq!(
            parsed.verify("secret-key-1", &other_time, now),
            Err(SignatureError::BadSignature),
            "the signature covers the date"
        );
    }

    #[test]
    fn upstream_headers_parse_and_garbage_does_not() {
        // As the official Python client writes it (signature.py), also without credentials.
        let header = "MQv2-HMAC-SHA1 Credential=ak1, SignedHeaders=x-mq-date-time, \
                      Signature=0123456789abcdef0123456789abcdef01234567";
        assert_eq!(
            Authorization::parse(header).unwrap().unwrap().access_key,
            "ak1"
        );
        let anonymous = "MQv2-HMAC-SHA1 Credential=, SignedHeaders=x-mq-date-time, \
                         Signature=0123456789abcdef0123456789abcdef01234567";
        assert_eq!(Authorization::parse(anonymous), Ok(None));
        for bad in [
            "",
            "Basic abc",
            "MQv2-HMAC-SHA1",
            "MQv2-HMAC-SHA1 Credential=ak1",
            "MQv2-HMAC-SHA1 Credential=ak1, SignedHeaders=host, Signature=00",
            "MQv2-HMAC-SHA1 Credential=ak1, SignedHeaders=x-mq-date-time, Signature=zz",
            "MQv2-HMAC-SHA1 Credential=a b, SignedHeaders=x-mq-date-time, \
             Signature=0123456789abcdef0123456789abcdef01234567",
            "MQv2-HMAC-SHA1 Credential=a, Credential=b, SignedHeaders=x-mq-date-time, \
             Signature=0123456789abcdef0123456789abcdef01234567",
        ] {
            assert_eq!(
                Authorization::parse(bad),
                Err(SignatureError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn credentials_come_from_a_file_or_are_refused_clearly() {
        let dir = std::env::temp_dir().join(format!("creds-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("credentials");
        std::fs::write(&file, "# app\naccess_key = app\nsecret_key=secret-key-1\n").unwrap();
        let credentials = Credentials::from_file(&file).unwrap();
        assert_eq!(credentials.access_key, "app");
        assert!(!format!("{credentials:?}").contains("secret-key-1"));
        for bad in [
            "access_key=app\n",
            "access_key=app\nsecret_key=short\n",
            "access_key=app\nsecret_key=secret-key-1\nsecret_key=x\n",
            "user=app\n",
            "garbage",
        ] {
            std::fs::write(&file, bad).unwrap();
            assert!(Credentials::from_file(&file).is_err(), "{bad:?}");
        }
        assert!(Credentials::from_file(&dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
