//! VFIO devices opened by sysfs path (in progress).
