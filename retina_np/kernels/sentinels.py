"""The values with which the matcher marks an anchor that has no ground-truth box (a match
vector holds a box index >= 0 or one of these), and which the loss kernels read."""

BELOW_LOW_THRESHOLD = -1  # background: IoU below the low threshold, classification target all zeros
BETWEEN_THRESHOLDS = -2  # ignored: IoU between the thresholds, no classification or box loss
