//! system_info (in progress)
