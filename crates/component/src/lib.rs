//! dmuc-component
