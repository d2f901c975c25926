//! GetContainerEvents: a stream of container lifecycle events (kubelet's evented PLEG).

use tokio::sync::broadcast::error::RecvError;
use tonic::Status;
use tonic::codegen::BoxStream;

use crate::context::Context;
use crate::cri::v1::ContainerEventResponse;

pub fn stream(context: &Context) -> BoxStream<ContainerEventResponse> {
    let mut events = context.containers.subscribe();
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<ContainerEventResponse, Status>>(256);
    tokio::spawn(async move {
        loop {
            let item = match events.recv().await {
                Ok(event) => Ok(event),
                // A subscriber that falls this far behind has lost events: tell it, so kubelet relists.
                Err(RecvError::Lagged(missed)) => {
                    Err(Status::data_loss(format!("{missed} container events were dropped")))
                }
                Err(RecvError::Closed) => return,
            };
            let lagged = item.is_err();
            if sender.send(item).await.is_err() || lagged {
                return;
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))
}
