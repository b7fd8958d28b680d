//! Confinement applied to every process that enters a VM.

pub mod capabilities;
