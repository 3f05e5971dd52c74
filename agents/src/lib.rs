//! placeholder until the agents land.
