{#- Takes the service-account public key out of the mine. #}

include:
  - {{ tpldir.split('/')[0] }}.config.paths

kcm-mine-clean-service-account-public-key:
  module.run:
    - mine.delete:
      - kcm_service_account_public_key
    - require:
      - kcm_config: kcm-config-paths-validated
