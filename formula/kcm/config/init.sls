include:
  - .validated
  - .facts
