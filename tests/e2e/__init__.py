"""End-to-end tests: a real `firebox serve` process driven through boto3, the AWS CLI and raw HTTP."""
