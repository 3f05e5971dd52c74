//! Uploads in progress at once.
//!
//! An upload (a component, a package, a package to review) is read whole
//! into memory, up to [`ServeConfig::max_component`](crate::ServeConfig::max_component)
//! (64 MiB by default), before it waits its turn to compile. Before this
//! bound, one `write` client with 128 connections held 128 such bodies at
//! once (8 GiB); and a body may come as slowly as 64 KiB a second (see
//! [`crate::pace`]), so one held for long is cheap to the client. Now at
//! most [`MAX_UPLOADS`] are in progress, [`UPLOADS_PER_FAMILY`] of them
//! for one token family; one more is refused (`429`) before its body is
//! read.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::app::App;
use crate::auth::{Operator, family};
use crate::error::ApiError;
use crate::held::{Over, Place};

/// Uploads in progress at once, all token families together ...
pub(crate) const MAX_UPLOADS: usize = 4;
/// ... and for one family.
pub(crate) const UPLOADS_PER_FAMILY: usize = 2;

/// An operator with level `L` uploading, holding a place among the uploads
/// in progress until the request ends.
#[derive(Debug)]
pub(crate) struct Uploader<const L: u8> {
    /// Who uploads.
    pub(crate) operator: Operator<L>,
    _place: Place<toka_kernel::Digest>,
}

impl<const L: u8> FromRequestParts<Arc<App>> for Uploader<L> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let operator = Operator::<L>::from_request_parts(parts, app).await?;
        let place = app.uploads.take(family(&operator.token)).map_err(|over| {
            let message = match over {
                Over::All(max) => format!("{max} uploads are in progress, the most at once"),
                Over::Holder(max) => {
                    format!("this token's family has {max} uploads in progress, its most at once")
                }
            };
            ApiError::too_many(format!("{message}; try again when one ends"), 1)
        })?;
        Ok(Self {
            operator,
            _place: place,
        })
    }
}
