include:
  - .send
