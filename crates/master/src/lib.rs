//! dmuc-master
