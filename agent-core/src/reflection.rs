//! gRPC server reflection (`grpc.reflection.v1` and `v1alpha`), with errors
//! answered in the stream. tonic-reflection ends the whole stream with a
//! status on a symbol or file it does not know, so the requests a client
//! sent after it on that stream are lost; the protocol has an in-stream
//! `error_response` for exactly this, which grpcurl, Evans and grpcio's
//! client read. The messages and the generated service traits are
//! tonic-reflection's; the lookup tables are built here, once, from the
//! descriptor sets every node serves.

use std::{collections::HashMap, pin::Pin, sync::Arc};

use futures_util::{Stream, StreamExt};
use prost::Message;
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorProto, FileDescriptorSet};
use tonic::{Code, Request, Response, Status, Streaming};

/// What reflection knows: every file, every symbol's file, the services.
#[derive(Debug, Default)]
pub struct Catalog {
    files: HashMap<String, Arc<[u8]>>,
    symbols: HashMap<String, Arc<[u8]>>,
    services: Vec<String>,
}

impl Catalog {
    /// The catalog of `sets` (encoded `FileDescriptorSet`s; the first file of
    /// a name wins).
    pub fn new(sets: &[&[u8]]) -> Result<Self, prost::DecodeError> {
        let mut c = Catalog::default();
        for set in sets {
            for fd in FileDescriptorSet::decode(*set)?.file {
                c.add(fd);
            }
        }
        c.services.sort();
        c.services.dedup();
        Ok(c)
    }

    /// Every service molt's nodes may serve, with reflection's own.
    pub fn molt() -> Self {
        Self::new(&[
            proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ])
        .expect("the embedded descriptor sets are valid")
    }

    fn add(&mut self, fd: FileDescriptorProto) {
        let Some(name) = fd.name.clone() else { return };
        if self.files.contains_key(&name) {
            return;
        }
        let raw: Arc<[u8]> = fd.encode_to_vec().into();
        self.files.insert(name, raw.clone());
        let package = fd.package.clone().unwrap_or_default();
        let mut add = |symbol: String| {
            self.symbols.insert(symbol, raw.clone());
        };
        for m in &fd.message_type {
            message(&mut add, &package, m);
        }
        for e in &fd.enum_type {
            enumeration(&mut add, &package, e);
        }
        for s in &fd.service {
            let service = join(&package, s.name());
            for m in &s.method {
                add(join(&service, m.name()));
            }
            add(service.clone());
            self.services.push(service);
        }
    }

    fn file(&self, name: &str) -> Result<Vec<u8>, (Code, String)> {
        self.files.get(name).map(|r| r.to_vec()).ok_or((Code::NotFound, format!("file {name:?} not found")))
    }

    fn symbol(&self, name: &str) -> Result<Vec<u8>, (Code, String)> {
        self.symbols.get(name).map(|r| r.to_vec()).ok_or((Code::NotFound, format!("symbol {name:?} not found")))
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() { name.to_owned() } else { format!("{prefix}.{name}") }
}

fn message(add: &mut impl FnMut(String), prefix: &str, m: &DescriptorProto) {
    let name = join(prefix, m.name());
    for f in &m.field {
        add(join(&name, f.name()));
    }
    for o in &m.oneof_decl {
        add(join(&name, o.name()));
    }
    for n in &m.nested_type {
        message(add, &name, n);
    }
    for e in &m.enum_type {
        enumeration(add, &name, e);
    }
    add(name);
}

fn enumeration(add: &mut impl FnMut(String), prefix: &str, e: &EnumDescriptorProto) {
    let name = join(prefix, e.name());
    for v in &e.value {
        add(join(&name, v.name()));
    }
    add(name);
}

/// One reflection service over a catalog, for the protocol version whose
/// generated types are in `$pb`.
macro_rules! reflection_service {
    ($module:ident, $pb:path) => {
        /// Reflection in this protocol version.
        pub mod $module {
            use super::*;
            use $pb::{
                ErrorResponse, ExtensionNumberResponse, FileDescriptorResponse, ListServiceResponse,
                ServerReflectionRequest, ServerReflectionResponse, ServiceResponse,
                server_reflection_request::MessageRequest,
                server_reflection_response::MessageResponse,
                server_reflection_server::{ServerReflection, ServerReflectionServer},
            };

            /// The service.
            #[derive(Debug, Clone)]
            pub struct Service(pub Arc<Catalog>);

            /// It as tonic serves it.
            pub fn server(catalog: Arc<Catalog>) -> ServerReflectionServer<Service> {
                ServerReflectionServer::new(Service(catalog))
            }

            fn answer(catalog: &Catalog, req: ServerReflectionRequest) -> ServerReflectionResponse {
                let found = match req.message_request.clone() {
                    None => Err((Code::InvalidArgument, "no message_request".to_owned())),
                    Some(MessageRequest::FileByFilename(f)) => catalog.file(&f).map(|fd| {
                        MessageResponse::FileDescriptorResponse(FileDescriptorResponse {
                            file_descriptor_proto: vec![fd],
                        })
                    }),
                    Some(MessageRequest::FileContainingSymbol(s)) => catalog.symbol(&s).map(|fd| {
                        MessageResponse::FileDescriptorResponse(FileDescriptorResponse {
                            file_descriptor_proto: vec![fd],
                        })
                    }),
                    Some(MessageRequest::FileContainingExtension(_)) => {
                        Err((Code::NotFound, "molt's services declare no extensions".to_owned()))
                    }
                    // None declared: an empty list, as clients such as grpcurl expect.
                    Some(MessageRequest::AllExtensionNumbersOfType(t)) => {
                        Ok(MessageResponse::AllExtensionNumbersResponse(ExtensionNumberResponse {
                            base_type_name: t,
                            extension_number: vec![],
                        }))
                    }
                    Some(MessageRequest::ListServices(_)) => {
                        Ok(MessageResponse::ListServicesResponse(ListServiceResponse {
                            service: catalog.services.iter().map(|s| ServiceResponse { name: s.clone() }).collect(),
                        }))
                    }
                };
                let response = found.unwrap_or_else(|(code, message)| {
                    MessageResponse::ErrorResponse(ErrorResponse { error_code: code as i32, error_message: message })
                });
                ServerReflectionResponse {
                    valid_host: req.host.clone(),
                    original_request: Some(req),
                    message_response: Some(response),
                }
            }

            #[tonic::async_trait]
            impl ServerReflection for Service {
                type ServerReflectionInfoStream =
                    Pin<Box<dyn Stream<Item = Result<ServerReflectionResponse, Status>> + Send>>;

                async fn server_reflection_info(
                    &self,
                    req: Request<Streaming<ServerReflectionRequest>>,
                ) -> Result<Response<Self::ServerReflectionInfoStream>, Status> {
                    let catalog = self.0.clone();
                    // One answer per request, in order; a broken request
                    // stream ends the answers.
                    let answers = req.into_inner().map(move |r| r.map(|r| answer(&catalog, r)));
                    Ok(Response::new(Box::pin(answers)))
                }
            }
        }
    };
}

reflection_service!(v1, tonic_reflection::pb::v1);
reflection_service!(v1alpha, tonic_reflection::pb::v1alpha);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalog_knows_molts_services_their_methods_and_messages() {
        let c = Catalog::molt();
        for s in ["molt.v1.Control", "molt.v1.Leader", "molt.v1.Relay", "molt.v1.Raft", "grpc.health.v1.Health"] {
            assert!(c.services.iter().any(|x| x == s), "{s}: {:?}", c.services);
            assert!(c.symbol(s).is_ok(), "{s}");
        }
        assert!(c.symbol("molt.v1.Command").is_ok());
        assert!(c.symbol("molt.v1.Command.operation_id").is_ok());
        assert_eq!(c.symbol("molt.v1.Nope").unwrap_err().0, Code::NotFound);
        let fd = FileDescriptorProto::decode(c.symbol("molt.v1.Leader").unwrap().as_slice()).unwrap();
        assert!(fd.service.iter().any(|s| s.name() == "Leader"));
        assert!(c.file(fd.name()).is_ok());
    }
}
