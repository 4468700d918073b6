//! Walking sources, writing sessions, reading them back.
