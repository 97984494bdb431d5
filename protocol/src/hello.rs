//! The first frame of every connection, in both directions. Frozen: never change these shapes.

use serde::{Deserialize, Serialize};

use crate::{MAGIC, PROTOCOL_VERSION};

/// Encoding of the frames that follow the hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// bincode 2.0, standard configuration, over the serde model. Compact; the CLI uses it.
    Bincode,
    /// One JSON document per frame. For editor integrations in other languages.
    Json,
}

/// What a client says first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Always [`MAGIC`].
    pub magic: String,
    /// The client's [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// The client's build (crate version), shown to the user on a mismatch.
    pub build: String,
    /// Encodings the client can speak, most preferred first. Names this build does not know
    /// are skipped when reading, so a newer client can offer newer encodings first and still be
    /// served in an older one.
    #[serde(deserialize_with = "known_encodings")]
    pub encodings: Vec<Encoding>,
}

/// Read an encoding list, skipping names this build does not know.
fn known_encodings<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Encoding>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Offered {
        Known(Encoding),
        Other(serde::de::IgnoredAny),
    }
    let offered = Vec::<Offered>::deserialize(d)?;
    Ok(offered
        .into_iter()
        .filter_map(|o| match o {
            Offered::Known(e) => Some(e),
            Offered::Other(_) => None,
        })
        .collect())
}

impl Hello {
    /// The hello this build of the protocol sends.
    pub fn new(build: impl Into<String>, encodings: Vec<Encoding>) -> Self {
        Hello {
            magic: MAGIC.to_string(),
            protocol: PROTOCOL_VERSION,
            build: build.into(),
            encodings,
        }
    }
}

/// What the daemon answers to a [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HelloReply {
    /// Go ahead; later frames use `encoding`.
    Accepted {
        /// The daemon's protocol version (equal to the client's).
        protocol: u32,
        /// The daemon's build.
        build: String,
        /// The encoding chosen from the client's offer.
        encoding: Encoding,
    },
    /// The daemon cannot talk to this client; it closes the connection after this frame.
    Incompatible {
        /// The daemon's protocol version.
        protocol: u32,
        /// The daemon's build, so the client can say "mythosd X is running".
        build: String,
        /// Why, in words.
        reason: String,
    },
}

/// The daemon's side of the handshake: decide how to answer `hello`.
///
/// Pure so that it can be tested without a socket. The first encoding in the client's list that
/// the daemon speaks wins.
pub fn negotiate(hello: &Hello, daemon_build: &str) -> HelloReply {
    let incompatible = |reason: String| HelloReply::Incompatible {
        protocol: PROTOCOL_VERSION,
        build: daemon_build.to_string(),
        reason,
    };
    if hello.magic != MAGIC {
        return incompatible(format!("bad magic {:?}: not a mythos client", hello.magic));
    }
    if hello.protocol != PROTOCOL_VERSION {
        return incompatible(format!(
            "protocol {} is not supported (this daemon speaks {PROTOCOL_VERSION})",
            hello.protocol
        ));
    }
    match hello.encodings.first() {
        Some(&encoding) => HelloReply::Accepted {
            protocol: PROTOCOL_VERSION,
            build: daemon_build.to_string(),
            encoding,
        },
        None => incompatible(
            "the client offered no encoding this daemon speaks (it speaks bincode and json)"
                .to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_golden_json() {
        // Frozen bytes: a client of any version must produce and accept exactly these shapes.
        let hello = Hello::new("0.1.0", vec![Encoding::Bincode, Encoding::Json]);
        let json = serde_json::to_string(&hello).unwrap();
        assert_eq!(
            json,
            r#"{"magic":"mythos","protocol":9,"build":"0.1.0","encodings":["bincode","json"]}"#
        );
        let reply = HelloReply::Accepted {
            protocol: 1,
            build: "0.1.0".into(),
            encoding: Encoding::Json,
        };
        assert_eq!(
            serde_json::to_string(&reply).unwrap(),
            r#"{"accepted":{"protocol":1,"build":"0.1.0","encoding":"json"}}"#
        );
        let old: HelloReply = serde_json::from_str(
            r#"{"incompatible":{"protocol":8,"build":"9.9.9","reason":"x","later_field":1}}"#,
        )
        .unwrap();
        assert!(matches!(old, HelloReply::Incompatible { protocol: 8, .. }));
    }

    #[test]
    fn unknown_encodings_are_skipped_and_the_next_one_is_chosen() {
        let hello: Hello = serde_json::from_str(
            r#"{"magic":"mythos","protocol":9,"build":"9","encodings":["msgpack","json"]}"#,
        )
        .unwrap();
        assert_eq!(hello.encodings, [Encoding::Json]);
        assert!(matches!(
            negotiate(&hello, "d"),
            HelloReply::Accepted {
                encoding: Encoding::Json,
                ..
            }
        ));
        let only_new: Hello = serde_json::from_str(
            r#"{"magic":"mythos","protocol":8,"build":"9","encodings":["cbor"]}"#,
        )
        .unwrap();
        match negotiate(&only_new, "d") {
            HelloReply::Incompatible { reason, .. } => {
                assert!(reason.contains("speaks"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn negotiation() {
        let ok = Hello::new("1", vec![Encoding::Json, Encoding::Bincode]);
        assert!(matches!(
            negotiate(&ok, "d"),
            HelloReply::Accepted {
                encoding: Encoding::Json,
                ..
            }
        ));
        let mut bad = ok.clone();
        bad.protocol = 99;
        match negotiate(&bad, "d") {
            HelloReply::Incompatible { reason, .. } => assert!(reason.contains("99")),
            other => panic!("{other:?}"),
        }
        let mut bad = ok.clone();
        bad.magic = "http".into();
        assert!(matches!(
            negotiate(&bad, "d"),
            HelloReply::Incompatible { .. }
        ));
        let mut bad = ok;
        bad.encodings.clear();
        assert!(matches!(
            negotiate(&bad, "d"),
            HelloReply::Incompatible { .. }
        ));
    }
}
