//! Containers: the CRI container lifecycle (the OCI spec of a container is built in `spec`).

pub mod spec;
