//! pprof (in progress)
