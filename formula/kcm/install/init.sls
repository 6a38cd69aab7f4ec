include:
  - .user
  - .binary
