"""Small pieces shared by every package: user-facing errors, progress output, result files, figures."""
