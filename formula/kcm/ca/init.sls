include:
  - .files
