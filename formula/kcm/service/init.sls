include:
  - .unit
  - .running
