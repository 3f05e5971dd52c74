//! Uploads in progress at once.
//!
//! An upload (a component, a package, a package to review) is read whole
//! into memory, up to [`ServeConfig::max_component`](crate::ServeConfig::max_component)
//! (64 MiB by default), before it waits its turn to compile. Before this
//! bound, one `write` client with 128 connections held 128 such bodies at
//! once (8 GiB); and a body may come as slowly as 64 KiB a second (see
//! [`crate::pace`]), so one held for long is cheap to the client. Now at
//! most [`MAX_UPLOADS`] components are uploaded at once,
//! [`UPLOADS_PER_FAMILY`] of them by one token family; packages (an
//! `admin`'s) have places of their own, [`MAX_PACKAGE_UPLOADS`], one per
//! family, so `write` clients cannot keep an admin from installing one;
//! one more is refused (`429`) before its body is read.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use toka_kernel::Digest;

use crate::app::App;
use crate::auth::{Operator, family};
use crate::error::ApiError;
use crate::held::{Bounded, Over, Place};

/// Components uploaded at once, all token families together ...
pub(crate) const MAX_UPLOADS: usize = 4;
/// ... and by one family.
pub(crate) const UPLOADS_PER_FAMILY: usize = 2;
/// Packages uploaded at once (to install or review), one per family.
pub(crate) const MAX_PACKAGE_UPLOADS: usize = 2;

/// The places for uploads in progress.
#[derive(Debug)]
pub(crate) struct Uploads {
    /// Components (`write`).
    components: Arc<Bounded<Digest>>,
    /// Packages (`admin`).
    packages: Arc<Bounded<Digest>>,
}

impl Uploads {
    pub(crate) fn new() -> Self {
        Self {
            components: Bounded::new(MAX_UPLOADS, UPLOADS_PER_FAMILY),
            packages: Bounded::new(MAX_PACKAGE_UPLOADS, 1),
        }
    }

    /// Uploads in progress now, of both kinds.
    pub(crate) fn count(&self) -> usize {
        self.components.count() + self.packages.count()
    }
}

/// An operator with level `L` uploading, holding a place among the uploads
/// in progress until the request ends.
#[derive(Debug)]
pub(crate) struct Uploader<const L: u8> {
    /// Who uploads.
    pub(crate) operator: Operator<L>,
    _place: Place<Digest>,
}

impl<const L: u8> FromRequestParts<Arc<App>> for Uploader<L> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let operator = Operator::<L>::from_request_parts(parts, app).await?;
        // An admin's uploads are packages; a writer's, components.
        let places = if L >= 2 {
            &app.uploads.packages
        } else {
            &app.uploads.components
        };
        let place = places.take(family(&operator.token)).map_err(|over| {
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
