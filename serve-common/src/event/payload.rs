use std::any::Any;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A payload as the bus holds it: the notifier's own value (never serialized
/// for in-process delivery), or CBOR bytes that came from another process.
#[derive(Clone)]
pub(crate) enum PayloadRepr {
    Local(Arc<dyn LocalPayload>),
    /// Shares the buffer it was read into (a NATS message's payload).
    Encoded(bytes::Bytes),
}

pub(crate) trait LocalPayload: Any + Send + Sync {
    fn as_any(&self) -> &dyn Any;
    fn to_value(&self) -> Result<ciborium::Value, String>;
    fn encode(&self) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        self.encode_into(&mut out)?;
        Ok(out)
    }
    /// Appends the CBOR encoding to `out` (no buffer of its own).
    fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), String>;
    fn type_name(&self) -> &'static str;
}

impl<T: Serialize + Send + Sync + 'static> LocalPayload for T {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn to_value(&self) -> Result<ciborium::Value, String> {
        ciborium::Value::serialized(self).map_err(|e| e.to_string())
    }

    fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), String> {
        ciborium::into_writer(self, out).map_err(|e| e.to_string())
    }

    fn type_name(&self) -> &'static str {
        std::any::type_name::<T>()
    }
}

/// A payload read as `T`: borrowed when the notifier sent a `T` in this
/// process, owned when it had to be converted (another type, or another
/// process). Dereferences to `T`.
pub enum Payload<'a, T> {
    /// The notifier's value itself.
    Borrowed(&'a T),
    /// A value converted through serde.
    Owned(T),
}

impl<T> Deref for Payload<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        match self {
            Self::Borrowed(t) => t,
            Self::Owned(t) => t,
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for Payload<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

impl<T: Clone> Payload<'_, T> {
    /// The value, cloned if it was borrowed.
    pub fn into_owned(self) -> T {
        match self {
            Self::Borrowed(t) => t.clone(),
            Self::Owned(t) => t,
        }
    }
}

/// A payload that cannot be read as the type a handler asked for.
#[derive(Debug, Clone, thiserror::Error)]
#[error("payload of event `{event}` cannot be read as `{expected}` (it holds {found}): {message}")]
pub struct PayloadError {
    /// The event's name.
    pub event: String,
    /// The type the handler asked for.
    pub expected: &'static str,
    /// What the payload holds: a local type's name, or "encoded data".
    pub found: String,
    /// The serde error.
    pub message: String,
}

impl PayloadRepr {
    pub(crate) fn read<T: DeserializeOwned + 'static>(
        &self,
        event: &str,
    ) -> Result<Payload<'_, T>, PayloadError> {
        let error = |found: String, message: String| PayloadError {
            event: event.to_owned(),
            expected: std::any::type_name::<T>(),
            found,
            message,
        };
        match self {
            Self::Local(local) => {
                if let Some(t) = local.as_any().downcast_ref::<T>() {
                    return Ok(Payload::Borrowed(t));
                }
                let found = || format!("a `{}`", local.type_name());
                let value = local.to_value().map_err(|m| error(found(), m))?;
                value
                    .deserialized::<T>()
                    .map(Payload::Owned)
                    .map_err(|e| error(found(), e.to_string()))
            }
            Self::Encoded(bytes) => ciborium::from_reader::<T, _>(&bytes[..])
                .map(Payload::Owned)
                .map_err(|e| error("encoded data".to_owned(), e.to_string())),
        }
    }

    pub(crate) fn encode(&self) -> Result<Arc<[u8]>, String> {
        match self {
            Self::Local(local) => local.encode().map(Arc::from),
            Self::Encoded(bytes) => Ok(Arc::from(&bytes[..])),
        }
    }

    /// Appends the CBOR encoding to `out`; on an error `out` may hold a
    /// part of it.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), String> {
        match self {
            Self::Local(local) => local.encode_into(out),
            Self::Encoded(bytes) => {
                out.extend_from_slice(bytes);
                Ok(())
            }
        }
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Local(local) => local.type_name().to_owned(),
            Self::Encoded(bytes) => format!("{} encoded bytes", bytes.len()),
        }
    }
}
