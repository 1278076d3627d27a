//! cryptfile
