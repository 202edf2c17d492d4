//! dmuc-master
pub mod store;
