//! Observation sessions.
