"""The labelling page: people judge pairs of images while a preference algorithm trains (`rlcm label`)."""
