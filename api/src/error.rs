//! The typed error every API call can fail with, and how it travels inside a
//! ttrpc status: the gRPC code for generic clients, and our [`v1::Error`] in
//! the status details for Furnace's SDKs.

use crate::ttrpc::{Any, Status};
use crate::v1::{self, ErrorCode};
use crate::wire::{code, ERROR_TYPE_URL};
use prost::Message;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[{}] {message}", code_name(*.code))]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// For a failed batch: which call failed.
    pub call_index: Option<u32>,
}

/// `NOT_PERMITTED` for `ERROR_CODE_NOT_PERMITTED`.
pub fn code_name(code: ErrorCode) -> &'static str {
    code.as_str_name().trim_start_matches("ERROR_CODE_")
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            call_index: None,
        }
    }

    pub fn to_proto(&self) -> v1::Error {
        v1::Error {
            code: self.code as i32,
            message: self.message.clone(),
            call_index: self.call_index.unwrap_or(0),
        }
    }

    /// The ttrpc status a server answers with.
    pub fn to_status(&self) -> Status {
        Status {
            code: grpc_code(self.code),
            message: self.to_string(),
            details: vec![Any {
                type_url: ERROR_TYPE_URL.into(),
                value: self.to_proto().encode_to_vec(),
            }],
        }
    }

    /// Reads a failed status back; statuses from other servers keep their text.
    pub fn from_status(status: &Status) -> Self {
        let detail = status
            .details
            .iter()
            .find(|d| d.type_url == ERROR_TYPE_URL)
            .and_then(|d| v1::Error::decode(d.value.as_slice()).ok());
        match detail {
            Some(e) => ApiError {
                code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Internal),
                message: e.message,
                call_index: None,
            },
            None => ApiError::new(code_from_grpc(status.code), status.message.clone()),
        }
    }
}

impl From<&v1::Error> for ApiError {
    fn from(e: &v1::Error) -> Self {
        ApiError {
            code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Internal),
            message: e.message.clone(),
            call_index: Some(e.call_index),
        }
    }
}

pub fn grpc_code(code: ErrorCode) -> i32 {
    match code {
        ErrorCode::Unspecified | ErrorCode::Internal => code::INTERNAL,
        ErrorCode::NotPermitted => code::PERMISSION_DENIED,
        ErrorCode::BadAddress => code::OUT_OF_RANGE,
        ErrorCode::NotFound => code::NOT_FOUND,
        ErrorCode::LimitExceeded => code::RESOURCE_EXHAUSTED,
        ErrorCode::GuestGone | ErrorCode::Unavailable => code::UNAVAILABLE,
        ErrorCode::ProfileMismatch => code::FAILED_PRECONDITION,
        ErrorCode::InvalidArgument => code::INVALID_ARGUMENT,
        ErrorCode::Unsupported => code::UNIMPLEMENTED,
        ErrorCode::DeadlineExceeded => code::DEADLINE_EXCEEDED,
    }
}

fn code_from_grpc(grpc: i32) -> ErrorCode {
    match grpc {
        code::PERMISSION_DENIED => ErrorCode::NotPermitted,
        code::OUT_OF_RANGE => ErrorCode::BadAddress,
        code::NOT_FOUND => ErrorCode::NotFound,
        code::RESOURCE_EXHAUSTED => ErrorCode::LimitExceeded,
        code::UNAVAILABLE => ErrorCode::GuestGone,
        code::FAILED_PRECONDITION => ErrorCode::ProfileMismatch,
        code::INVALID_ARGUMENT => ErrorCode::InvalidArgument,
        code::UNIMPLEMENTED => ErrorCode::Unsupported,
        code::DEADLINE_EXCEEDED => ErrorCode::DeadlineExceeded,
        _ => ErrorCode::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_survive_a_status_round_trip() {
        let e = ApiError::new(ErrorCode::NotPermitted, "write needs the write permission");
        let status = e.to_status();
        assert_eq!(status.code, code::PERMISSION_DENIED);
        assert_eq!(ApiError::from_status(&status), e);
        assert_eq!(
            e.to_string(),
            "[NOT_PERMITTED] write needs the write permission"
        );
    }

    #[test]
    fn foreign_statuses_map_by_grpc_code() {
        let status = Status {
            code: code::UNIMPLEMENTED,
            message: "no such method".into(),
            details: vec![],
        };
        assert_eq!(ApiError::from_status(&status).code, ErrorCode::Unsupported);
    }
}
