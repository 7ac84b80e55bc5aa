//! Caption files (stub: being written).
