//! Large documents in an S3-compatible bucket (`aws-sdk-s3`), referenced from the
//! views as `s3://BUCKET/KEY`.
//!
//! The client is built from [`S3Options`] alone (no AWS config files, no instance
//! metadata): an endpoint (path-style for MinIO, moto, s3s and the like), a region, and
//! static credentials read from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (and
//! `AWS_SESSION_TOKEN`). Errors that may pass (no connection, a timeout, a 5xx) are
//! [`SinkError::Unavailable`], which the sinks retry; the others are not.

use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, retry::RetryConfig, timeout::TimeoutConfig,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;

use crate::SinkError;

/// Where the bucket is and how to reach it.
#[derive(Clone, Debug)]
pub struct S3Options {
    /// Endpoint URL (`http://127.0.0.1:15000`); `None`: AWS's own for the region.
    pub endpoint: Option<String>,
    /// Region (`us-east-1`).
    pub region: String,
    /// The bucket.
    pub bucket: String,
    /// Path-style addressing (`ENDPOINT/BUCKET/KEY`), as most S3-compatible servers want.
    pub force_path_style: bool,
    /// Create the bucket when it does not exist.
    pub create_bucket: bool,
    /// Per-operation timeout (each attempt).
    pub timeout: Duration,
}

/// An S3 bucket holding large documents.
#[derive(Clone, Debug)]
pub struct S3Store {
    client: Client,
    bucket: String,
}

fn unavailable<E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static>(
    context: String,
) -> impl FnOnce(SdkError<E>) -> SinkError {
    move |e| {
        let passing = match &e {
            SdkError::ServiceError(s) => s.raw().status().is_server_error(),
            _ => true, // no connection, timeout, a response that did not parse
        };
        let detail = match &e {
            SdkError::ServiceError(s) => format!(
                "{}: {}",
                s.err().code().unwrap_or("error"),
                s.err().message().unwrap_or("")
            ),
            other => aws_sdk_s3::error::DisplayErrorContext(other).to_string(),
        };
        let source = Box::new(std::io::Error::other(detail));
        if passing {
            SinkError::Unavailable { context, source }
        } else {
            SinkError::Database { context, source }
        }
    }
}

/// Splits `s3://BUCKET/KEY`.
fn split_ref(reference: &str) -> Result<(&str, &str), SinkError> {
    reference
        .strip_prefix("s3://")
        .and_then(|rest| rest.split_once('/'))
        .ok_or_else(|| {
            SinkError::Refused(format!("{reference} is not an s3://BUCKET/KEY reference"))
        })
}

impl S3Store {
    /// A client for `options`; checks the bucket (and creates it when asked).
    pub async fn connect(options: &S3Options) -> Result<S3Store, SinkError> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let (Some(key), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY"))
        else {
            return Err(SinkError::Refused(
                "S3 needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment".into(),
            ));
        };
        let credentials = Credentials::new(key, secret, env("AWS_SESSION_TOKEN"), None, "env");
        let mut config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(options.region.clone()))
            .credentials_provider(credentials)
            .force_path_style(options.force_path_style)
            // Studio retries whole writes itself (crate::retry), logging each retry.
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(options.timeout.min(Duration::from_secs(5)))
                    .operation_attempt_timeout(options.timeout)
                    .build(),
            );
        if let Some(endpoint) = &options.endpoint {
            config = config.endpoint_url(endpoint);
        }
        let store = S3Store {
            client: Client::from_conf(config.build()),
            bucket: options.bucket.clone(),
        };
        let bucket = &store.bucket;
        match store.client.head_bucket().bucket(bucket).send().await {
            Ok(_) => {}
            Err(SdkError::ServiceError(e))
                if options.create_bucket && e.raw().status().as_u16() == 404 =>
            {
                match store.client.create_bucket().bucket(bucket).send().await {
                    Ok(_) => tracing::info!(bucket, "created the S3 bucket"),
                    // Another process created it meanwhile.
                    Err(SdkError::ServiceError(e))
                        if e.err().code() == Some("BucketAlreadyOwnedByYou") => {}
                    Err(e) => return Err(unavailable(format!("creating bucket {bucket}"))(e)),
                }
            }
            Err(e) => return Err(unavailable(format!("checking bucket {bucket}"))(e)),
        }
        Ok(store)
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Puts an object; returns its `s3://` reference.
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<String, SinkError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/json")
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(unavailable(format!("putting s3://{}/{key}", self.bucket)))?;
        Ok(format!("s3://{}/{key}", self.bucket))
    }

    /// Gets the object an `s3://` reference names.
    pub async fn get(&self, reference: &str) -> Result<Vec<u8>, SinkError> {
        let (bucket, key) = split_ref(reference)?;
        let object = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(unavailable(format!("getting {reference}")))?;
        let body = object
            .body
            .collect()
            .await
            .map_err(|e| SinkError::Unavailable {
                context: format!("reading {reference}"),
                source: Box::new(e),
            })?;
        Ok(body.into_bytes().to_vec())
    }

    /// A presigned GET URL for an `s3://` reference.
    pub async fn presigned_get(
        &self,
        reference: &str,
        expiry: Duration,
    ) -> Result<String, SinkError> {
        let (bucket, key) = split_ref(reference)?;
        let presigning = PresigningConfig::expires_in(expiry).map_err(|e| SinkError::Database {
            context: format!("presigning {reference} for {expiry:?}"),
            source: Box::new(e),
        })?;
        let request = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .presigned(presigning)
            .await
            .map_err(unavailable(format!("presigning {reference}")))?;
        Ok(request.uri().to_owned())
    }
}
