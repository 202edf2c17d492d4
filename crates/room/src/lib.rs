//! dmuc-room
