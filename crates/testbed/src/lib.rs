//! dmuc-testbed
