//! The checks, by concern: the report against its VEK (`authenticity`), the report against a
//! policy (`policy`), and the structured results they produce ([`results`]). The chain checks
//! live in [`crate::chain`].

pub(crate) mod authenticity;
pub(crate) mod policy;
pub mod results;
